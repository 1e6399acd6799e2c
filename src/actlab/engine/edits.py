"""Built-in edits: callables `(activation, ctx) -> activation` with a token scope.

An activation arrives shaped `[batch, q_len, *site_shape]`. Each edit changes only the tokens its
`positions` select (never padding). Method objects (steering vectors, quantization recipes)
produce these; they never install hooks themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from actlab.engine.context import EditContext, Positions
from actlab.errors import ActlabError


@dataclass
class Edit:
    """Base class: subclasses define `apply(x, ctx)`; `__call__` restricts it to `positions`."""

    positions: Positions = field(default="all", kw_only=True)

    def apply(self, x: torch.Tensor, ctx: EditContext) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, ctx: EditContext) -> torch.Tensor:
        sel = ctx.select(self.positions)
        if not bool(sel.any()):
            return x
        edited = self.apply(x, ctx)
        if bool(sel.all()):
            return edited
        return torch.where(sel.view(*sel.shape, *([1] * (x.dim() - 2))), edited, x)


def _like(t, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(t).to(device=x.device, dtype=x.dtype)


def _unit(direction, x: torch.Tensor) -> torch.Tensor:
    u = _like(direction, x).float()
    norm = u.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise ActlabError("direction has zero norm")
    return (u / norm).to(x.dtype)


@dataclass
class Add(Edit):
    """x + alpha · direction (activation addition, CAA / ActAdd)."""

    direction: torch.Tensor
    alpha: float = 1.0

    def apply(self, x, ctx):
        return x + self.alpha * _like(self.direction, x)


@dataclass
class Scale(Edit):
    """factor · x."""

    factor: float

    def apply(self, x, ctx):
        return x * self.factor


@dataclass
class ProjectOut(Edit):
    """x − (x·u)u: removes the component along `direction` (directional ablation)."""

    direction: torch.Tensor

    def apply(self, x, ctx):
        u = _unit(self.direction, x)
        return x - (x * u).sum(-1, keepdim=True) * u


@dataclass
class SetProjection(Edit):
    """x + (value − x·u)u: clamps the component along `direction` to `value`."""

    direction: torch.Tensor
    value: float

    def apply(self, x, ctx):
        u = _unit(self.direction, x)
        return x + (self.value - (x * u).sum(-1, keepdim=True)) * u


@dataclass
class ScaleProjection(Edit):
    """x + (factor − 1)(x·u)u: multiplies the component along `direction` by `factor`."""

    direction: torch.Tensor
    factor: float

    def apply(self, x, ctx):
        u = _unit(self.direction, x)
        return x + (self.factor - 1.0) * (x * u).sum(-1, keepdim=True) * u


@dataclass
class Clamp(Edit):
    """Elementwise clamp to [min, max]."""

    min: float | None = None
    max: float | None = None

    def apply(self, x, ctx):
        return x.clamp(min=self.min, max=self.max)


@dataclass
class ZeroNeurons(Edit):
    """Sets the given indices of the last axis to zero (neuron / channel ablation)."""

    indices: Sequence[int]

    def apply(self, x, ctx):
        out = x.clone()
        out[..., list(self.indices)] = 0
        return out


@dataclass
class Replace(Edit):
    """Patches in recorded values: `values[k]` replaces the k-th selected token (row-major).

    `values` is what a `Recording` returns for the site (`rec[site]`), recorded on prompts with
    the same token counts; activation patching from a clean run into a corrupted one.
    """

    values: torch.Tensor

    def __call__(self, x, ctx):
        sel = ctx.select(self.positions)
        n = int(sel.sum())
        if n == 0:
            return x
        if self.values.shape[0] < n or tuple(self.values.shape[1:]) != tuple(x.shape[2:]):
            raise ActlabError(f"replace at {ctx.site}: have values {tuple(self.values.shape)}, "
                              f"need {n} rows of shape {tuple(x.shape[2:])}")
        out = x.clone()
        out[sel] = _like(self.values[:n], x)
        return out


@dataclass
class FakeQuantize(Edit):
    """Quantize-dequantize with `quantizer(x) -> x̂` (the compression formats plug in here).

    The default quantizer is symmetric round-to-nearest INT-`bits` with one scale per token.
    """

    bits: int = 8
    quantizer: Callable[[torch.Tensor], torch.Tensor] | None = None

    def apply(self, x, ctx):
        if self.quantizer is not None:
            return self.quantizer(x)
        return fake_quant_per_token(x, self.bits)


def fake_quant_per_token(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric INT-`bits` quantize-dequantize with one absmax scale per token (flattened site)."""
    flat = x.float().flatten(2)
    qmax = 2 ** (bits - 1) - 1
    scale = flat.abs().amax(-1, keepdim=True).clamp(min=1e-12) / qmax
    return ((flat / scale).round().clamp(-qmax - 1, qmax) * scale).view_as(x).to(x.dtype)


# Lower-case constructors, the way users write them: al.edits.add(direction, alpha=4.0)
def add(direction, alpha: float = 1.0, positions: Positions = "all") -> Add:
    return Add(direction=torch.as_tensor(direction), alpha=alpha, positions=positions)


def scale(factor: float, positions: Positions = "all") -> Scale:
    return Scale(factor=factor, positions=positions)


def project_out(direction, positions: Positions = "all") -> ProjectOut:
    return ProjectOut(direction=torch.as_tensor(direction), positions=positions)


def set_projection(direction, value: float, positions: Positions = "all") -> SetProjection:
    return SetProjection(direction=torch.as_tensor(direction), value=value, positions=positions)


def scale_projection(direction, factor: float, positions: Positions = "all") -> ScaleProjection:
    return ScaleProjection(direction=torch.as_tensor(direction), factor=factor, positions=positions)


def clamp(min: float | None = None, max: float | None = None, positions: Positions = "all") -> Clamp:
    if min is None and max is None:
        raise ActlabError("clamp needs min, max or both")
    return Clamp(min=min, max=max, positions=positions)


def zero_neurons(indices: Sequence[int], positions: Positions = "all") -> ZeroNeurons:
    return ZeroNeurons(indices=list(indices), positions=positions)


def replace(values: torch.Tensor, positions: Positions = "all") -> Replace:
    return Replace(values=values, positions=positions)


def fake_quantize(bits: int = 8, quantizer=None, positions: Positions = "all") -> FakeQuantize:
    return FakeQuantize(bits=bits, quantizer=quantizer, positions=positions)
