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

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-steer"
PYTHON="${PYTHON:-python3}"
TORCH="torch==2.13.0"              # pinned: pip takes the CPU build; unpinned pulls a CUDA build
REPENG="repeng==0.4.0"
STEERING_VECTORS="steering-vectors==0.12.2"
STAMP="$VENV/.stamp-steer"

if [[ -f "$STAMP" && "$STAMP" -nt "$0" && "$STAMP" -nt "$ROOT/pyproject.toml" ]]; then
    echo "steering bench env up to date: $VENV"
    exit 0
fi

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install "$TORCH"
mapfile -t ACTLAB_DEPS < <("$VENV/bin/python" -c "import tomllib; print('\n'.join(tomllib.load(open('$ROOT/pyproject.toml', 'rb'))['project']['dependencies']))")
# One resolution for actlab's requirements, numpy < 2 and repeng (which brings scikit-learn and gguf);
# the torch pin is repeated so that no requirement can swap the CPU build out.
"${PIP[@]}" install "$TORCH" "numpy<2" "${ACTLAB_DEPS[@]}" "$REPENG"
# steering-vectors' only other requirements (tqdm, scikit-learn) are installed by the line above.
"${PIP[@]}" install --no-deps "$STEERING_VECTORS"
"${PIP[@]}" install --no-deps -e "$ROOT"
# Expected: exactly one complaint, steering-vectors' transformers<5 pin.
CHECK="$("$VENV/bin/python" -m pip check 2>&1 || true)"
echo "$CHECK"
if [[ -n "$(grep -v '^steering-vectors .* requires transformers<5\|^steering-vectors .* has requirement transformers<5' <<<"$CHECK" | grep -v '^No broken requirements' || true)" ]]; then
    echo "unexpected dependency problems (see above)" >&2
    exit 1
fi
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import repeng, steering_vectors, actlab  # noqa: F401  (they import)
for name in ("torch", "transformers", "numpy", "scikit-learn", "repeng", "steering-vectors", "actlab"):
    print(f"{name:18s} {md.version(name)}")
EOF
touch "$STAMP"
