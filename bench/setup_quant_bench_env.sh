#!/usr/bin/env bash
# Create .venv-quant: pinned CPU torch, the W8A8 quantization competitors (llmcompressor,
# optimum-quanto, torchao) and actlab (editable). Idempotent: a second run only checks that
# everything is installed. Competitors live here, never in the project's own .venv.
#
# Why a venv of its own: llmcompressor 0.14.0.1 pins transformers >=5.15.0,<=5.17.0 and
# compressed-tensors ==0.19.0 (and brings datasets, auto-round, nvidia-ml-py, pandas, pyarrow),
# so this venv runs transformers 5.17.0 where the project's .venv has a newer 5.x. actlab's own
# range (transformers >=5.0,<6) allows it. All three libraries resolve together with torch 2.13.0
# (llmcompressor: torch >=2.10,<=2.14; torchao 0.18.0 and optimum-quanto 0.2.7: no upper bound), so
# none is left out and none is installed --no-deps: `pip check` is expected to be clean.
#
# Harmless noise at import: torchao's wheel ships CUDA-only extensions (_C_mxfp8, _C_cutlass_90a)
# and prints "Failed to load ..." for each on a CPU-only torch; its CPU int8 path needs neither.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/venv_common.sh"
VENV="$ROOT/.venv-quant"
LLMCOMPRESSOR="llmcompressor==0.14.0.1"
QUANTO="optimum-quanto==0.2.7"
TORCHAO="torchao==0.18.0"
STAMP="$VENV/.stamp-quant"

exit_if_fresh "$STAMP" "quantization bench env" "$0"

new_venv "$VENV"
read_actlab_deps "$VENV"
# One resolution for actlab's requirements and the three libraries; the torch pin is repeated so
# that no requirement can swap the CPU build out (llmcompressor moves transformers to 5.17.0).
"${PIP[@]}" install "$TORCH" "${ACTLAB_DEPS[@]}" "$LLMCOMPRESSOR" "$QUANTO" "$TORCHAO"
"${PIP[@]}" install --no-deps -e "$ROOT"
# Expected: no complaint at all ("No broken requirements found.").
expect_pip_check "$VENV"
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import torch
import llmcompressor, optimum.quanto, torchao, actlab  # noqa: F401  (they import)
assert torch.__version__.startswith("2.13.0"), f"torch was replaced: {torch.__version__}"
for name in ("torch", "transformers", "numpy", "compressed-tensors", "llmcompressor", "optimum-quanto", "torchao",
             "actlab"):
    print(f"{name:18s} {md.version(name)}")
EOF
touch "$STAMP"
