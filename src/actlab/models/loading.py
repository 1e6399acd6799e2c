"""Resolve a model reference (embedded name, HF folder, .gguf file, hub id) to a loaded HF model."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from actlab.errors import ActlabError, did_you_mean
from actlab.models.embedded import EMBEDDED, convert_gguf, fetch_model
from actlab.paths import home

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ActlabError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve(ref: str) -> tuple[str, Path | str]:
    """(display name, folder or hub id) for a model reference; converts GGUF files on first use."""
    if ref in EMBEDDED:
        return ref, fetch_model(ref)
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ActlabError(f"no such GGUF file: {ref}")
        folder = home() / "models" / f"gguf-{path.stem}"
        if not (folder / "config.json").exists():
            convert_gguf(path.resolve(), folder)
        return path.stem, folder
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ActlabError(f"{ref} is a folder but has no config.json: not a HF model folder")
        return path.name, path
    if re.fullmatch(r"[\w.-]+/[\w.-]+", ref) and not path.exists():
        return ref, ref
    raise ActlabError(
        f"unknown model {ref!r}{did_you_mean(ref, EMBEDDED)}; give an embedded name "
        f"({', '.join(EMBEDDED)}), a HF model folder, a .gguf file or a hub id like org/name"
    )


def load_model(ref: str, dtype: str | torch.dtype = "float32", device: str = "cpu"):
    """Load (model, tokenizer, name, folder-or-None) for `ref`, model in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, source = resolve(ref)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=parse_dtype(dtype))
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:  # hub ids without a network, missing files
        raise ActlabError(f"could not load {ref!r}: {str(exc).splitlines()[0]}") from exc
    model.to(device).eval()
    return model, tokenizer, name, source if isinstance(source, Path) else None


def cache_kwarg(model) -> str:
    """The forward/generate argument that takes a KV cache: `cache` (transformers >= 5.24) or `past_key_values`."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
