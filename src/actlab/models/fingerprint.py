"""Model fingerprints: a name plus a hash of the weights, so artifacts refuse the wrong model."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Fingerprint:
    """Identifies a model: its name, its architecture and a SHA-256 over its weights (first 16 hex)."""

    name: str
    model_type: str
    weights_sha256: str

    def to_dict(self) -> dict:
        return asdict(self)

    def matches(self, other: "Fingerprint | dict") -> bool:
        other_sha = other["weights_sha256"] if isinstance(other, dict) else other.weights_sha256
        return other_sha == self.weights_sha256


def hash_files(folder: Path) -> str:
    """SHA-256 over the safetensors files of a folder, cached beside them (keyed on sizes and mtimes)."""
    files = sorted(folder.glob("*.safetensors"))
    key = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache = folder / ".actlab-fingerprint.json"
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["sha256"]
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                digest.update(chunk)
    sha = digest.hexdigest()[:16]
    try:
        cache.write_text(json.dumps({"key": key, "sha256": sha}))
    except OSError:
        pass  # read-only folder: hash again next time
    return sha


def hash_state_dict(model: torch.nn.Module) -> str:
    """SHA-256 over parameter names, shapes and float32 values (independent of the load dtype)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
