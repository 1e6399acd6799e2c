#!/usr/bin/env bash
# Create .venv-bench: pinned CPU torch, the competitors (transformer-lens, nnsight) and actlab
# (editable). Idempotent: a second run only checks that everything is installed.
# Competitors live here, never in the project's own .venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-bench"
PYTHON="${PYTHON:-python3}"
TORCH="torch==2.13.0"              # pinned: pip takes the CPU build; unpinned pulls a CUDA build
COMPETITORS=("transformer-lens==4.3.0" "nnsight==0.8.1")
STAMP="$VENV/.stamp-bench"

if [[ -f "$STAMP" && "$STAMP" -nt "$0" && "$STAMP" -nt "$ROOT/pyproject.toml" ]]; then
    echo "bench env up to date: $VENV"
    exit 0
fi

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install "$TORCH"
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
