"""LLM-FP4 (Liu et al., EMNLP 2023): FP weight and activation quantization with a per-layer search
of the exponent/mantissa split and the clipping range, and per-channel activation scales
reparameterised as exponent biases of the weights.

Per group input, every channel gets a power-of-two factor `s_j = 2^round(log2(c_j / max c))`
(`c` the channel absmax): the activation is divided by `s` (folded into the producer when
possible) and the weight columns multiplied by it. Because `s` is a power of two it is carried by
the weights' exponent bias: the weight is quantized *before* the factor is applied
(`Q(W) * s`), so the reparameterisation costs the weights nothing. Then, per linear, the weight
format (all ExMy with E + M = bits - 1, per output channel, MSE clipping) and the activation
format and clipping ratio (per tensor, static) are chosen to minimise the layer's output error
on sampled calibration rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actlab.compress.formats import FPFormat
from actlab.compress.quantizer import Quantizer
from actlab.compress.transforms import select_groups
from actlab.errors import ActlabError

CLIP_RATIOS = [round(0.3 + 0.05 * i, 2) for i in range(15)]  # 0.3, 0.35, …, 1.0


def fp_formats(bits: int) -> list[FPFormat]:
    """Every ExMy with one sign bit and E >= 1 for `bits` bits (no infinities or NaNs)."""
    return [FPFormat(e, bits - 1 - e, specials="none") for e in range(1, bits)]


@dataclass
class LLMFP4:
    """See the module docstring. `w` and `a` are the weight and activation bit widths."""

    w: int = 4
    a: int = 4
    sample_rows: int = 512

    def __post_init__(self) -> None:
        for side, bits in (("w", self.w), ("a", self.a)):
            if not 3 <= bits <= 8:
                raise ActlabError(f"llmfp4: {side} must be 3..8 bits, got {bits}")

    is_quantizer = True  # the last stage of a recipe, like QuantSpec

    def apply(self, state) -> None:
        groups = select_groups(state.groups, "all")
        stats = state.stats(groups, "llmfp4", sample_rows=self.sample_rows)
        for g in groups:
            c = stats[g.name].absmax.clamp_min(1e-8)
            s = g.tie(torch.exp2(torch.round(torch.log2(c / c.max()))))
            g.scale(s)
            x = stats[g.name].sample() / s.float()[None, :]
            amax = float((stats[g.name].absmax / s).max())
            for q in g.linears:
                q.column_pow2 = s.float()
                self._search(q, x, amax)

    @torch.no_grad()
    def _search(self, q, x: torch.Tensor, amax: float) -> None:
        w = q.weight.detach().float()
        w_base = w / q.column_pow2[None, :]
        y = x @ w.T
        best_w = None
        for fmt in fp_formats(self.w):
            wq = Quantizer(fmt, "per_channel", clip="mse")
            w_hat = wq(w_base) * q.column_pow2[None, :]
            err = float((x @ (w - w_hat).T).square().sum())
            if best_w is None or err < best_w[0]:
                best_w = (err, wq, w_hat)
        _, wq, w_hat = best_w
        best_a = None
        for fmt in fp_formats(self.a):
            for ratio in CLIP_RATIOS:
                aq = Quantizer(fmt, "per_tensor", dynamic=False, clip=ratio)
                aq.calibrate(torch.tensor([[amax]]))
                err = float((aq(x) @ w_hat.T - y).square().sum())
                if best_a is None or err < best_a[0]:
                    best_a = (err, aq)
        q.weight.data = w_hat.to(q.weight.dtype)
        q.weight_quantizer = wq
        q.input_quantizer = best_a[1]

    def __str__(self) -> str:
        return f"llmfp4(w={self.w},a={self.a})"
