#!/usr/bin/env bash
# Create .venv-steer: pinned CPU torch, the steering competitors (repeng, steering-vectors) and
# actlab (editable). Idempotent: a second run only checks that everything is installed.
# Competitors live here, never in the project's own .venv.
#
# Why a venv of its own: repeng 0.4.0 requires numpy < 2, and steering-vectors 0.12.2 declares
# transformers < 5 (it runs with 5.x: installed --no-deps, `pip check` reports that one line).
# actlab is installed --no-deps after its own requirements (read from pyproject.toml) have been
# resolved together with numpy < 2 and repeng, so nothing can swap numpy or torch afterwards.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/venv_common.sh"
VENV="$ROOT/.venv-steer"
REPENG="repeng==0.4.0"
STEERING_VECTORS="steering-vectors==0.12.2"
STAMP="$VENV/.stamp-steer"

exit_if_fresh "$STAMP" "steering bench env" "$0"

new_venv "$VENV"
read_actlab_deps "$VENV"
# One resolution for actlab's requirements, numpy < 2 and repeng (which brings scikit-learn and gguf);
# the torch pin is repeated so that no requirement can swap the CPU build out.
"${PIP[@]}" install "$TORCH" "numpy<2" "${ACTLAB_DEPS[@]}" "$REPENG"
# steering-vectors' only other requirements (tqdm, scikit-learn) are installed by the line above.
"${PIP[@]}" install --no-deps "$STEERING_VECTORS"
"${PIP[@]}" install --no-deps -e "$ROOT"
# Expected: exactly one complaint, steering-vectors' transformers<5 pin.
expect_pip_check "$VENV" '^steering-vectors .* requires transformers<5\|^steering-vectors .* has requirement transformers<5'
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import repeng, steering_vectors, actlab  # noqa: F401  (they import)
for name in ("torch", "transformers", "numpy", "scikit-learn", "repeng", "steering-vectors", "actlab"):
    print(f"{name:18s} {md.version(name)}")
EOF
touch "$STAMP"
