"""Linear groups: the linears that read one input tensor (q/k/v, gate/up, o, down), the module that
produces that input, and the three exact edits transforms are made of.

`find_groups` runs one short forward and groups consecutive `QuantLinear`s that received the
*same input tensor* (same storage; every tensor is kept alive during the pass, so no address is
reused), so it needs no per-architecture table of which projections share an input. Each group
gets a site name from the adapter (`attn.in`, `attn.z`, `mlp.in`, `mlp.act`) and, where it can be
checked or is known, a producer to fold into:

- a norm (checked: the group's input is the norm's output tensor); RMSNorm, LayerNorm and
  Gemma's `x * (1 + w)` form (its offset is detected numerically);
- the up projection for `down_proj` (`act(gate(x)) * up(x)`, by the Llama/Gemma names);
- the value projection for `o_proj` (separate q/k/v; channels tied across the query heads that
  share a key-value head).

`scale(s)` divides the input by `s` per channel and multiplies the consumers' weight columns by
`s`; `shift(z)` subtracts `z` and adds `W z` to the consumers' biases; `rotate(Q)` multiplies
the input by an orthogonal `Q` and the weights by `Q` too; `transform(M)` multiplies the input by any
invertible `M` and the weights by `M^-T`. Each is folded into the producer when
it can be (and no online op precedes it), else it becomes an online op of the consumers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from actlab.compress.qlinear import QuantLinear


# --------------------------------------------------------------------------- producers
@dataclass
class NormProducer:
    """A norm whose output is exactly the group's input: gain = weight + offset."""

    module: nn.Module
    offset: float

    @property
    def can_shift(self) -> bool:
        return getattr(self.module, "bias", None) is not None

    @torch.no_grad()
    def scale(self, s: torch.Tensor) -> None:
        w = self.module.weight
        gain = w.double() + self.offset
        w.copy_((gain / s - self.offset).to(w.dtype))
        if self.can_shift:
            self.module.bias.copy_((self.module.bias.double() / s).to(self.module.bias.dtype))

    @torch.no_grad()
    def shift(self, z: torch.Tensor) -> None:
        self.module.bias.copy_((self.module.bias.double() - z).to(self.module.bias.dtype))

    def gain(self) -> torch.Tensor:
        return self.module.weight.detach().double() + self.offset


@dataclass
class RowsProducer:
    """A projection whose output rows map onto the group's input channels: consumer channel c
    is row `index[c]` of the producer (many-to-one for grouped-query attention)."""

    linear: nn.Module
    index: torch.Tensor
    can_shift = False

    def tie(self, stat: torch.Tensor) -> torch.Tensor:
        """The per-channel statistic made equal across channels sharing a producer row (max)."""
        rows = torch.full((self.linear.weight.shape[0],), -torch.inf, dtype=stat.dtype)
        rows = rows.scatter_reduce(0, self.index, stat, reduce="amax")
        return rows[self.index]

    @torch.no_grad()
    def scale(self, s: torch.Tensor) -> None:
        rows = torch.ones(self.linear.weight.shape[0], dtype=torch.float64)
        rows[self.index] = s.double()
        w = self.linear.weight
        w.copy_((w.double() / rows[:, None]).to(w.dtype))
        if self.linear.bias is not None:
            self.linear.bias.copy_((self.linear.bias.double() / rows).to(self.linear.bias.dtype))


def _norm_offset(norm: nn.Module) -> float | None:
    """0 for `x̂ * w` norms, 1 for Gemma's `x̂ * (1 + w)`; None when `norm` is not a norm we know."""
    w = getattr(norm, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 1:
        return None
    if getattr(norm, "bias", None) is not None:
        return 0.0
    x = torch.randn(2, w.shape[0], generator=torch.Generator().manual_seed(0)).to(w.dtype)
    saved = w.detach().clone()
    with torch.no_grad():
        w.zero_()
        y = norm(x)
        w.copy_(saved)
    return 1.0 if y.abs().max() > 0 else 0.0


# --------------------------------------------------------------------------- groups
@dataclass
class LinearGroup:
    """Linears that read the same input, with the site it is and what produced it."""

    block: int | None
    site: str
    linears: list[QuantLinear]
    producer: NormProducer | RowsProducer | None = None
    folded: list[str] = field(default_factory=list)  # which edits went into the producer

    @property
    def name(self) -> str:
        return self.site if self.block is None else f"blocks.{self.block}.{self.site}"

    @property
    def dim(self) -> int:
        return self.linears[0].in_features

    def _online(self) -> bool:
        return bool(self.linears[0].ops)

    def tie(self, stat: torch.Tensor) -> torch.Tensor:
        """Make a per-channel statistic foldable (equal where the producer ties channels)."""
        if isinstance(self.producer, RowsProducer) and not self._online():
            return self.producer.tie(stat)
        return stat

    def weight_absmax(self) -> torch.Tensor:
        """max |W[:, j]| over every consumer, per input channel (float64)."""
        return torch.stack([q.weight.detach().abs().amax(0) for q in self.linears]).amax(0).double()

    @torch.no_grad()
    def scale(self, s: torch.Tensor) -> str:
        """Divide the input by `s` per channel; returns where it went ("norm", "rows", "online")."""
        s = s.detach().double()
        for q in self.linears:
            q.weight.copy_((q.weight.double() * s[None, :]).to(q.weight.dtype))
        if self.producer is not None and not self._online():
            self.producer.scale(s)
            where = type(self.producer).__name__.removesuffix("Producer").lower()
        else:
            for q in self.linears:
                q.add_op("mul", 1.0 / s)
            where = "online"
        self.folded.append(f"scale:{where}")
        return where

    @torch.no_grad()
    def shift(self, z: torch.Tensor) -> str:
        """Subtract `z` from the input per channel; the consumers' biases absorb `W z`."""
        z = z.detach().double()
        for q in self.linears:
            b = (q.weight.double() @ z)
            if q.bias is None:
                q.bias = nn.Parameter(b.to(q.weight.dtype), requires_grad=False)
            else:
                q.bias.copy_((q.bias.double() + b).to(q.bias.dtype))
        if self.producer is not None and self.producer.can_shift and not self._online():
            self.producer.shift(z)
            where = "norm"
        else:
            for q in self.linears:
                q.add_op("shift", z)
            where = "online"
        self.folded.append(f"shift:{where}")
        return where

    @torch.no_grad()
    def rotate(self, rotation: torch.Tensor) -> str:
        """Multiply the input by the orthogonal `rotation` (online) and the weights by it too."""
        r = rotation.double()
        for q in self.linears:
            q.weight.copy_((q.weight.double() @ r).to(q.weight.dtype))
            q.add_op("matmul", r)
        self.folded.append("rotate:online")
        return "online"

    @torch.no_grad()
    def transform(self, matrix: torch.Tensor) -> str:
        """Multiply the input by any invertible `matrix` M (online) and the weights by M^-T, so
        that x M (W M^-T)^T = x W^T (FlatQuant's affine transforms; `rotate` is the orthogonal case)."""
        m = matrix.double()
        for q in self.linears:
            q.weight.copy_(torch.linalg.solve(m, q.weight.double().T).T.to(q.weight.dtype))
            q.add_op("matmul", m)
        self.folded.append("transform:online")
        return "online"

    def fold_norm_gain(self) -> bool:
        """Move a norm producer's gain into the consumers (gain becomes 1): QuaRot's first step.
        Channels with a zero gain (Gemma-3 270M has such dead channels) keep it."""
        if isinstance(self.producer, NormProducer) and not self._online() and not self.producer.can_shift:
            gain = self.producer.gain()
            self.scale(torch.where(gain.abs() > 1e-12, gain, torch.ones_like(gain)))
            return True
        return False


def _site(rel: str, adapter) -> str:
    if rel in (adapter.q_proj, adapter.k_proj, adapter.v_proj, adapter.qkv_proj):
        return "attn.in"
    if rel == adapter.o_proj:
        return "attn.z"
    if rel == adapter.down_proj:
        return "mlp.act"
    return "mlp.in"


def _kv_index(config, n_channels: int) -> torch.Tensor | None:
    heads = getattr(config, "num_attention_heads", None)
    kv = getattr(config, "num_key_value_heads", None) or heads
    if not heads or n_channels % heads:
        return None
    hd = n_channels // heads
    h = torch.arange(n_channels) // hd
    return (h // (heads // kv)) * hd + torch.arange(n_channels) % hd


@torch.no_grad()
def find_groups(lab, linears: list[QuantLinear], probe_ids: torch.Tensor) -> list[LinearGroup]:
    """Group `linears` by shared input object in one forward of `probe_ids` and find producers."""
    model, adapter = lab.model, lab.adapter
    calls: list[tuple[QuantLinear, torch.Tensor]] = []
    outputs: dict[int, nn.Module] = {}
    kept: list[torch.Tensor] = []  # keep tensors alive so that no id is reused during the pass

    def observe(q, x2):  # x2 is a view of the input; its base is the input tensor
        calls.append((q, x2))

    hooks = []
    layers = model.get_submodule(adapter.layers)
    for block in layers:
        for attr in (adapter.attn_norm, adapter.mlp_norm):
            norm = _submodule(block, attr)
            if norm is None:
                continue

            def hook(module, args, output):
                kept.append(output)
                outputs[output.data_ptr()] = module
            hooks.append(norm.register_forward_hook(hook))
    for q in linears:
        q.observers.append(observe)
    try:
        model(input_ids=probe_ids)
    finally:
        for q in linears:
            q.observers.remove(observe)
        for h in hooks:
            h.remove()

    groups: list[LinearGroup] = []
    prev_key = None
    for q, x2 in calls:
        key = (x2.data_ptr(), tuple(x2.shape))
        if groups and key == prev_key and q not in groups[-1].linears:
            groups[-1].linears.append(q)
            continue
        prev_key = key
        parts = q.name.split(".")
        block = int(parts[1]) if parts[0] == "blocks" else None
        rel = ".".join(parts[2:]) if block is not None else q.name
        site = _site(rel, adapter) if block is not None else rel + ".in"
        group = LinearGroup(block, site, [q])
        norm = outputs.get(x2.data_ptr())
        if norm is not None and block is not None:
            offset = _norm_offset(norm)
            if offset is not None and norm.weight.shape[0] == q.in_features:
                group.producer = NormProducer(norm, offset)
        elif block is not None and site == "mlp.act" and rel.endswith("down_proj"):
            up = _submodule(layers[block], rel.removesuffix("down_proj") + "up_proj")
            if up is not None and up.weight.shape[0] == q.in_features:
                group.producer = RowsProducer(up, torch.arange(q.in_features))
        elif block is not None and site == "attn.z" and adapter.qkv_layout == "separate":
            v = layers[block].get_submodule(adapter.v_proj)
            index = _kv_index(model.config, q.in_features)
            if index is not None and int(index.max()) < v.weight.shape[0]:
                group.producer = RowsProducer(v, index)
        groups.append(group)
    for g in groups:
        for q in g.linears:
            q.site = g.name
    return groups


def _submodule(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None
