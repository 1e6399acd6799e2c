#!/usr/bin/env bash
# Create .venv-bench: pinned CPU torch, the competitors (transformer-lens, nnsight) and actlab
# (editable). Idempotent: a second run only checks that everything is installed.
# Competitors live here, never in the project's own .venv.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/venv_common.sh"
VENV="$ROOT/.venv-bench"
COMPETITORS=("transformer-lens==4.3.0" "nnsight==0.8.1")
STAMP="$VENV/.stamp-bench"

exit_if_fresh "$STAMP" "bench env" "$0"

new_venv "$VENV"
# The torch pin is repeated so that no competitor's requirement can swap the CPU build out.
"${PIP[@]}" install "$TORCH" "${COMPETITORS[@]}"
"${PIP[@]}" install "$TORCH" -e "$ROOT"
"$VENV/bin/python" -m pip check
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
for name in ("torch", "transformers", "transformer-lens", "nnsight", "actlab"):
    print(f"{name:18s} {md.version(name)}")
EOF
touch "$STAMP"
