"""Outlier transforms, each exact in floating point before quantization (tested on tiny models).

A transform edits the `LinearGroup`s of a private copy of the model through `scale`, `shift` and
`rotate` (see `actlab.compress.groups`), using statistics from calibration windows of the train
split. `sites` picks the groups: "all" (default) or sites joined by "+", e.g. "attn.in+mlp.in".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actlab.compress.rotations import rotation
from actlab.errors import ActlabError

SITES = ("attn.in", "attn.z", "mlp.in", "mlp.act")
_EPS = 1e-5


def select_groups(groups, sites: str) -> list:
    """The decoder groups whose site is in `sites` ("all" or "a+b")."""
    wanted = SITES if sites == "all" else tuple(s.strip() for s in sites.split("+"))
    bad = [s for s in wanted if s not in SITES]
    if bad:
        raise ActlabError(f"unknown site {bad[0]!r} in sites={sites!r}; sites are {', '.join(SITES)} (joined by '+') or all")
    return [g for g in groups if g.block is not None and g.site in wanted]


def _check_unit(method: str, alpha: float) -> None:
    if not 0 <= alpha <= 1:
        raise ActlabError(f"{method}: alpha must be in [0, 1], got {alpha}")


@dataclass
class SmoothQuant:
    """SmoothQuant (Xiao et al., ICML 2023): migrate activation range into the weights with
    `s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`, folded into the norm (attn.in, mlp.in), the up
    projection (mlp.act) or the value projection (attn.z, tied over grouped heads), else online."""

    alpha: float = 0.5
    sites: str = "all"

    def __post_init__(self) -> None:
        _check_unit("smoothquant", self.alpha)

    def apply(self, state) -> None:
        groups = select_groups(state.groups, self.sites)
        stats = state.stats(groups, "smoothquant")
        for g in groups:
            a = g.tie(stats[g.name].absmax.clamp_min(_EPS))
            w = g.tie(g.weight_absmax().clamp_min(_EPS))
            g.scale((a.pow(self.alpha) / w.pow(1 - self.alpha)).clamp_min(_EPS))


@dataclass
class OutlierTune:
    """OutlierTune (Wang et al., 2024): symmetrize each activation channel by its mid-range `z`
    (the shift folded into the consumers' biases as `W z`), then pre-execute the per-channel
    dequantization scale `(max - min) / 2` into the weights, so that a per-tensor activation
    quantizer sees every channel in [-1, 1]. As in the paper, only the linears after a norm
    (attn.in, mlp.in) by default."""

    sites: str = "attn.in+mlp.in"

    def apply(self, state) -> None:
        groups = select_groups(state.groups, self.sites)
        stats = state.stats(groups, "outliertune")
        for g in groups:
            st = stats[g.name]
            g.shift((st.amax + st.amin) / 2)
            g.scale(g.tie(((st.amax - st.amin) / 2).clamp_min(_EPS)))


@dataclass
class Rotate:
    """QuaRot-style rotation (Ashkboos et al., 2024): fold each norm's gain into its consumers,
    then rotate every linear input by a randomized Hadamard matrix (or a random orthogonal one)
    online, the weights by the same matrix, so outlier channels spread over all channels. Orders
    that are not powers of two use Kronecker products with Paley matrices (`rotations.hadamard`).
    `fold_gain=false` rotates the norm output with its gain: Gemma-3 suppresses huge norm-input
    channels with near-zero gains, and folding those gains away lets the huge values through."""

    kind: str = "hadamard"
    seed: int = 0
    sites: str = "all"
    fold_gain: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("hadamard", "random"):
            raise ActlabError(f"rotate: kind must be hadamard or random, got {self.kind!r}")

    def apply(self, state) -> None:
        cache: dict[int, torch.Tensor] = {}
        for g in select_groups(state.groups, self.sites):
            if self.fold_gain:
                g.fold_norm_gain()
            if g.dim not in cache:
                cache[g.dim] = rotation(g.dim, self.kind, self.seed)
            g.rotate(cache[g.dim])


@dataclass
class CrossQuant:
    """CrossQuant (Liu et al., 2024): quantize activation element (i, j) with the scale
    `t_i^alpha * c_j^(1-alpha) / qmax` (t: row absmax at run time, c: column absmax from
    calibration), which shrinks the "quantization kernel" (elements rounded to zero)."""

    alpha: float = 0.15
    sites: str = "all"

    def __post_init__(self) -> None:
        _check_unit("crossquant", self.alpha)

    def apply(self, state) -> None:
        for g in select_groups(state.groups, self.sites):
            for q in g.linears:
                q.cross_alpha = self.alpha


from actlab.compress.flatquant import FlatQuant  # noqa: E402  (it imports select_groups from here)

TRANSFORMS = {"smoothquant": SmoothQuant, "outliertune": OutlierTune, "rotate": Rotate, "crossquant": CrossQuant,
              "flatquant": FlatQuant}
