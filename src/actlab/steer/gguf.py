"""Read and write llama.cpp control-vector GGUF files (`--control-vector`, `--control-vector-scaled`).

A control-vector file is a GGUF with `general.architecture = "controlvector"`, a string
`controlvector.model_hint`, a uint32 `controlvector.layer_count` and one float32 1-D tensor
`direction.N` per steered layer. llama.cpp adds `direction.N` (times the strength) to the output of
its transformer block `il == N` (0-based, the `l_out` tensor), which is actlab's
`blocks.{N}.resid_post`. So the tensor index is the block index, with no shift; `direction.0` is
rejected by llama.cpp's loader, so block 0 cannot be steered through this format.
repeng's `ControlVector.export_gguf` uses the same numbering. See docs/steering-gguf.md.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from actlab.errors import ActlabError

ARCH = "controlvector"
KEY_ARCH = "general.architecture"
KEY_MODEL_HINT = f"{ARCH}.model_hint"
KEY_LAYER_COUNT = f"{ARCH}.layer_count"
_NAME = re.compile(r"direction\.(\d+)")


def tensor_name(block: int) -> str:
    """The GGUF tensor name llama.cpp adds to the output of 0-based block `block`."""
    return f"direction.{block}"


def write_control_vector(path, directions: dict[int, torch.Tensor], model_hint: str) -> Path:
    """Write `directions` (0-based block index -> vector added to that block's output) as a
    llama.cpp control-vector GGUF at `path`, atomically. Returns the path.

    Block `i` is written as tensor `direction.{i}`; llama.cpp applies it after block `i`
    (actlab site `blocks.{i}.resid_post`). Block 0 cannot be represented: llama.cpp rejects
    `direction.0`. Vectors are stored as float32.
    """
    import gguf

    if not isinstance(model_hint, str):
        raise ActlabError(f"model_hint must be a string, got {type(model_hint).__name__}")
    if not isinstance(directions, Mapping):
        raise ActlabError(f"directions must be a dict of block index -> tensor, got {type(directions).__name__}")
    if not directions:
        raise ActlabError("no directions to write: a control vector needs at least one block")

    arrays: dict[int, np.ndarray] = {}
    width = None
    for key in directions:
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            raise ActlabError(f"direction keys must be block indices (int), got {key!r}")
    for block in sorted(int(k) for k in directions):
        vec = directions[block]
        if block < 0:
            raise ActlabError(f"block index must be >= 0, got {block}")
        if block == 0:
            raise ActlabError(
                "block 0 cannot be written to a llama.cpp control vector: llama.cpp rejects tensor "
                "'direction.0' (common_control_vector_load_one: 'invalid (zero) direction tensor layer "
                "index') and keeps no control-vector slot for layer 0; steer block 0's output "
                "(blocks.0.resid_post) some other way, or drop it"
            )
        if not isinstance(vec, torch.Tensor):
            raise ActlabError(f"direction for block {block} must be a torch.Tensor, got {type(vec).__name__}")
        if vec.dim() != 1:
            raise ActlabError(f"direction for block {block} must be 1-D [d_model], got shape {tuple(vec.shape)}")
        if vec.is_complex():
            raise ActlabError(f"direction for block {block} is complex ({vec.dtype}); need real values")
        if vec.numel() == 0:
            raise ActlabError(f"direction for block {block} is empty")
        if width is None:
            width = vec.numel()
        elif vec.numel() != width:
            first = next(iter(arrays))
            raise ActlabError(
                f"direction widths differ: block {first} has {width} values, block {block} has {vec.numel()}"
            )
        arrays[block] = vec.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().copy()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, ARCH)
        writer.add_string(KEY_MODEL_HINT, model_hint)
        # repeng writes the number of direction tensors here; llama.cpp does not read it.
        writer.add_uint32(KEY_LAYER_COUNT, len(arrays))
        for block, arr in arrays.items():
            writer.add_tensor(tensor_name(block), arr)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _field_str(field) -> str:
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def read_control_vector(path) -> tuple[dict[int, torch.Tensor], str | None]:
    """Read a llama.cpp / repeng control-vector GGUF.

    Returns `({block: float32 [d_model] tensor}, model_hint)` where `block` is the 0-based
    transformer block whose output llama.cpp adds the vector to (tensor `direction.{block}`,
    actlab site `blocks.{block}.resid_post`). `model_hint` is None when the file has none.
    Files llama.cpp would refuse (non-F32 or non-1-D tensors, `direction.0`, other tensor
    names, mixed widths, no tensors) raise ActlabError.
    """
    import gguf

    path = Path(path)
    if not path.exists():
        raise ActlabError(f"control vector file not found: {path}")
    if not path.is_file():
        raise ActlabError(f"control vector path is not a file: {path}")
    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as e:  # bad magic, truncated file, ...
        raise ActlabError(f"{path} is not a readable GGUF file: {e}") from None

    arch_field = reader.get_field(KEY_ARCH)
    arch = _field_str(arch_field) if arch_field is not None and arch_field.data else None
    if arch != ARCH:
        raise ActlabError(
            f"{path} is not a control vector: {KEY_ARCH} is {arch!r}, expected {ARCH!r}"
        )
    hint_field = reader.get_field(KEY_MODEL_HINT)
    model_hint = _field_str(hint_field) if hint_field is not None and hint_field.data else None

    directions: dict[int, torch.Tensor] = {}
    width = None
    for t in reader.tensors:
        m = _NAME.fullmatch(t.name)
        if m is None:
            raise ActlabError(f"{path}: unexpected tensor {t.name!r}; a control vector holds only 'direction.N'")
        block = int(m.group(1))
        if block == 0:
            raise ActlabError(
                f"{path}: tensor 'direction.0' is invalid (llama.cpp rejects layer index 0 and has "
                "no control-vector slot for it)"
            )
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ActlabError(f"{path}: tensor {t.name} is {t.tensor_type.name}, llama.cpp needs F32")
        shape = [int(s) for s in t.shape]  # ggml order: ne[0] first
        if not shape or any(s != 1 for s in shape[1:]):
            raise ActlabError(f"{path}: tensor {t.name} is not 1-D (shape {shape})")
        n = shape[0]
        if width is None:
            width = n
        elif n != width:
            raise ActlabError(f"{path}: tensor {t.name} has {n} values, earlier directions have {width}")
        arr = np.array(t.data, dtype=np.float32, copy=True).reshape(n)
        directions[block] = torch.from_numpy(arr)
    if not directions:
        raise ActlabError(f"{path}: control vector has no direction tensors")
    del reader
    return dict(sorted(directions.items())), model_hint
