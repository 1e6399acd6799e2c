"""Artifact files shared by every method family: tensors in safetensors, metadata in JSON.

An artifact is a folder holding `tensors.safetensors` and `artifact.json` (kind, format version,
actlab version, model fingerprint, method, parameters, data provenance). No pickle anywhere:
artifacts may come from strangers. Writes are atomic (temporary folder, then rename).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from actlab.errors import ActlabError

FORMAT_VERSION = 1
TENSORS = "tensors.safetensors"
META = "artifact.json"
DIRECTIONS = "steering_vector"  # the kind of a directions artifact (a steering-vector file)


def save_artifact(path: str | Path, kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write `tensors` and `meta` (JSON-serialisable) as an artifact folder of `kind` at `path`."""
    from actlab import __version__

    path = Path(path).expanduser()
    if path.exists() and not (path / META).exists():
        raise ActlabError(f"'{path}' exists and is not an actlab artifact: refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / TENSORS))
        header = {"kind": kind, "format_version": FORMAT_VERSION, "actlab_version": __version__, **meta}
        (tmp / META).write_text(json.dumps(header, indent=2, sort_keys=False) + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_artifact(path: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an artifact folder written by `save_artifact`; its kind must be `kind`."""
    path = Path(path).expanduser()
    if not (path / META).is_file() or not (path / TENSORS).is_file():
        raise ActlabError(f"'{path}' is not an actlab artifact (no {META} and {TENSORS} inside)")
    try:
        meta = json.loads((path / META).read_text())
    except json.JSONDecodeError as e:
        raise ActlabError(f"'{path / META}' is not valid JSON: {e}") from None
    if meta.get("kind") != kind:
        raise ActlabError(f"'{path}' holds a {meta.get('kind')!r} artifact, not a {kind!r}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ActlabError(f"'{path}' was written by a newer actlab (format {meta['format_version']}); upgrade actlab")
    return load_file(str(path / TENSORS)), meta


def save_directions(path: str | Path, directions: dict[str, torch.Tensor], fingerprint: dict | None, method: str,
                    params: dict[str, Any], data: dict[str, Any]) -> Path:
    """Write per-site 1-D directions as a steering-vector artifact (`actlab.steer.SteeringVector.load` reads it).

    Any method family may export directions this way without importing `steer`.
    """
    if not directions:
        raise ActlabError("a directions artifact needs at least one site")
    widths = {tuple(d.shape) for d in directions.values()}
    if len(widths) != 1 or len(next(iter(widths))) != 1:
        raise ActlabError(f"directions must all be 1-D of one width, got shapes {sorted(widths)}")
    meta = {"fingerprint": fingerprint, "sites": list(directions), "width": next(iter(widths))[0],
            "method": method, "params": params, "data": data}
    return save_artifact(path, DIRECTIONS, {s: d.float() for s, d in directions.items()}, meta)


def load_directions(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`({site: direction}, meta)` from a file written by `save_directions`; meta holds fingerprint,
    method, params and data."""
    tensors, meta = load_artifact(path, DIRECTIONS)
    missing = [s for s in meta["sites"] if s not in tensors]
    if missing:
        raise ActlabError(f"'{path}' lacks the tensors for {missing}")
    return {s: tensors[s] for s in meta["sites"]}, meta
