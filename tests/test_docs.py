"""The Python examples in the README and docs/ run as written (each file's blocks in order)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = ["README.md", "docs/sites.md", "docs/record-edit.md", "docs/evaluation.md", "docs/store.md", "docs/steering.md", "docs/quantization.md",
         "docs/kv-cache.md", "docs/lowrank-mixed-precision.md", "docs/flatquant.md", "docs/reading.md"]

pytestmark = [pytest.mark.embedded, pytest.mark.xdist_group("docs")]


@pytest.mark.parametrize("name", FILES)
def test_examples_run(name, capsys):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / name).read_text(), flags=re.S)
    assert blocks, f"{name} has no python examples"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, name, "exec"), namespace)
