"""`SteeringVector`: per-site directions with their provenance; it produces edits, never hooks.

```python
vec = al.steer.DiffMean().fit(lab, pairs, sites="blocks.8-16.resid_post")
with lab.edit(vec.add(alpha=4.0, tokens="generated")):
    lab.generate("My day was")
vec.save("happy.steer"); al.steer.SteeringVector.load("happy.steer")
```
Operators: `add` (activation addition), `clamp` (set the projection to a value), `project_out`
(directional ablation), `scale` (multiply the projection). Token scopes: "all", "prompt",
"generated", "last", index lists, per-prompt masks or a callable (see `actlab.engine.context`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from actlab.artifacts import load_directions, save_directions
from actlab.engine import edits as E
from actlab.engine.context import Positions
from actlab.errors import ActlabError

_RESID_POST = re.compile(r"^blocks\.(\d+)\.resid_post$")


@dataclass
class SteeringVector:
    """Directions per site (`{site: [d] float32}`) plus model fingerprint, method and data provenance."""

    directions: dict[str, torch.Tensor]
    fingerprint: dict | None = None
    method: str = "manual"
    params: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not self.directions:
            raise ActlabError("a steering vector needs at least one site")
        self.directions = {s: torch.as_tensor(d).detach().float().cpu() for s, d in self.directions.items()}
        widths = {tuple(d.shape) for d in self.directions.values()}
        if len(widths) != 1 or len(next(iter(widths))) != 1:
            raise ActlabError(f"directions must all be 1-D of one width, got shapes {sorted(widths)}")

    # -- facts -----------------------------------------------------------------------------------
    @property
    def sites(self) -> list[str]:
        return list(self.directions)

    @property
    def width(self) -> int:
        return next(iter(self.directions.values())).shape[0]

    def norms(self) -> dict[str, float]:
        return {s: float(d.norm()) for s, d in self.directions.items()}

    def __repr__(self) -> str:
        model = self.fingerprint["name"] if self.fingerprint else "any model"
        return f"SteeringVector({self.method}, {len(self.directions)} sites, width {self.width}, {model})"

    def check(self, lab) -> None:
        """Raise unless `lab` is the model this vector was fitted on (fingerprint) and has its sites and width."""
        if self.fingerprint is not None and not lab.fingerprint.matches(self.fingerprint):
            raise ActlabError(f"this steering vector was fitted on {self.fingerprint['name']} "
                              f"(weights {self.fingerprint['weights_sha256']}), not on {lab.name} "
                              f"(weights {lab.fingerprint.weights_sha256}); use .for_any_model() to apply it anyway")
        for site in self.directions:
            shape = tuple(lab.site(site).shape)
            if shape != (self.width,):
                raise ActlabError(f"{site} of {lab.name} has shape {shape}; this vector has width {self.width}")

    def for_any_model(self) -> "SteeringVector":
        """A copy without the fingerprint: it applies to any model with these sites and width."""
        return SteeringVector(dict(self.directions), None, self.method, dict(self.params), dict(self.data))

    # -- operators -------------------------------------------------------------------------------
    def add(self, alpha: float = 1.0, tokens: Positions = "all") -> "SteeringEdits":
        """x + alpha · direction at every site (activation addition; CAA, arXiv 2312.06681)."""
        return self._edits(lambda d: E.add(d, alpha, tokens), f"add(alpha={alpha}, tokens={tokens!r})")

    def clamp(self, value: float, tokens: Positions = "all") -> "SteeringEdits":
        """Sets the projection on each site's unit direction to `value`."""
        return self._edits(lambda d: E.set_projection(d, value, tokens), f"clamp(value={value}, tokens={tokens!r})")

    def project_out(self, tokens: Positions = "all") -> "SteeringEdits":
        """Removes the component along each direction (directional ablation, arXiv 2406.11717)."""
        return self._edits(lambda d: E.project_out(d, tokens), f"project_out(tokens={tokens!r})")

    def scale(self, factor: float, tokens: Positions = "all") -> "SteeringEdits":
        """Multiplies the component along each direction by `factor`."""
        return self._edits(lambda d: E.scale_projection(d, factor, tokens), f"scale(factor={factor}, tokens={tokens!r})")

    def _edits(self, make, description: str) -> "SteeringEdits":
        return SteeringEdits([(self, {s: make(d) for s, d in self.directions.items()})], [description])

    # -- arithmetic --------------------------------------------------------------------------------
    def __add__(self, other: "SteeringVector") -> "SteeringVector":
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if self.width != other.width:
            raise ActlabError(f"cannot add vectors of widths {self.width} and {other.width}")
        if self.fingerprint and other.fingerprint and self.fingerprint["weights_sha256"] != other.fingerprint["weights_sha256"]:
            raise ActlabError("cannot add steering vectors fitted on different models")
        out = dict(self.directions)
        for s, d in other.directions.items():
            out[s] = out[s] + d if s in out else d
        return SteeringVector(out, self.fingerprint or other.fingerprint, "sum", {},
                              {"terms": [self._summary(), other._summary()]})

    def __mul__(self, factor: float) -> "SteeringVector":
        if not isinstance(factor, (int, float)):
            return NotImplemented
        return SteeringVector({s: d * float(factor) for s, d in self.directions.items()}, self.fingerprint,
                              "scaled", {"factor": float(factor)}, {"terms": [self._summary()]})

    __rmul__ = __mul__

    def __neg__(self) -> "SteeringVector":
        return self * -1.0

    def __sub__(self, other: "SteeringVector") -> "SteeringVector":
        return self + (-other)

    def _summary(self) -> dict:
        return {"method": self.method, "params": self.params, "data": self.data}

    # -- files -------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write a folder: `tensors.safetensors` (one tensor per site) and `artifact.json`."""
        return save_directions(path, self.directions, self.fingerprint, self.method, self.params, self.data)

    @classmethod
    def load(cls, path: str | Path) -> "SteeringVector":
        directions, meta = load_directions(path)
        return cls(directions, meta.get("fingerprint"), meta.get("method", "manual"),
                   meta.get("params", {}), meta.get("data", {}))

    def to_gguf(self, path: str | Path, model_hint: str | None = None) -> Path:
        """llama.cpp control vector (`--control-vector`): `direction.{i}` is added after block i."""
        from actlab.steer.gguf import write_control_vector

        layers = {}
        for site, d in self.directions.items():
            m = _RESID_POST.match(site)
            if m is None:
                raise ActlabError(f"llama.cpp control vectors live on the residual stream after a block; "
                                  f"{site} is not a blocks.N.resid_post site")
            layers[int(m.group(1))] = d
        hint = model_hint or (self.fingerprint or {}).get("model_type") or "llama"
        return write_control_vector(path, layers, hint)

    @classmethod
    def from_gguf(cls, path: str | Path) -> "SteeringVector":
        """Import a llama.cpp / repeng control vector; it carries no fingerprint (any model of its width)."""
        from actlab.steer.gguf import read_control_vector

        layers, hint = read_control_vector(path)
        return cls({f"blocks.{i}.resid_post": d for i, d in sorted(layers.items())}, None, "gguf",
                   {"model_hint": hint}, {"file": str(path)})


class SteeringEdits:
    """Edits made by steering vectors; `lab.edit(...)` accepts it, `+` combines several vectors."""

    def __init__(self, parts: list[tuple[SteeringVector, Mapping[str, Any]]], descriptions: list[str]):
        self.parts = parts
        self.descriptions = descriptions

    def edits(self, lab=None) -> list[tuple[str, Any]]:
        """`(site, edit)` pairs; with a lab, each vector is first checked against it."""
        pairs = []
        for vec, site_edits in self.parts:
            if lab is not None:
                vec.check(lab)
            pairs.extend(site_edits.items())
        return pairs

    def __add__(self, other: "SteeringEdits") -> "SteeringEdits":
        if not isinstance(other, SteeringEdits):
            return NotImplemented
        return SteeringEdits(self.parts + other.parts, self.descriptions + other.descriptions)

    def describe(self) -> list[dict]:
        """What the evaluation results record about these edits."""
        return [{"method": v.method, "sites": v.sites, "operator": d, "fingerprint": v.fingerprint}
                for (v, _), d in zip(self.parts, self.descriptions)]

    def __repr__(self) -> str:
        return " + ".join(f"{v.method}.{d}" for (v, _), d in zip(self.parts, self.descriptions))
