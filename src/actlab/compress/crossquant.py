"""CrossQuant's activation quantizer and the "quantization kernel" metric (Liu et al., 2024)."""

from __future__ import annotations

import torch

from actlab.compress.formats import IntFormat, parse_format


class CrossQuantizer:
    """Fake quantizer of 2-d activations `[tokens, channels]` with the element scale
    `t_i^alpha * c_j^(1-alpha) / qmax`: `t` the row absmax (dynamic), `c` the column absmax
    accumulated by `calibrate` (static, so it can be folded into the weights when deployed)."""

    dynamic = False

    def __init__(self, format, alpha: float) -> None:
        self.format = parse_format(format)
        self.alpha = float(alpha)
        self.columns: torch.Tensor | None = None

    def __str__(self) -> str:
        return f"cross({self.format.name}, alpha={self.alpha})"

    __repr__ = __str__

    @torch.no_grad()
    def calibrate(self, x2: torch.Tensor) -> "CrossQuantizer":
        c = x2.detach().float().abs().amax(0)
        self.columns = c if self.columns is None else torch.maximum(self.columns, c)
        return self

    def effective_bits(self, shape) -> float:
        """Format bits plus a 16-bit row scale per token (the column factors fold into the weights)."""
        return self.format.bits + 16 / shape[-1]

    @torch.no_grad()
    def __call__(self, x2: torch.Tensor) -> torch.Tensor:
        if self.columns is None:
            raise RuntimeError("CrossQuantizer is not calibrated")
        x = x2.float()
        fmt = self.format
        qmax = fmt.qmax if isinstance(fmt, IntFormat) else fmt.finite_max
        t = x.abs().amax(1, keepdim=True)
        scale = t.pow(self.alpha) * self.columns.to(x.device)[None, :].pow(1 - self.alpha) / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return (fmt.round(x / scale) * scale).to(x2.dtype)


def quantization_kernel(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Fraction of the non-zero elements of `x` that quantized to exactly zero in `x_hat`."""
    nonzero = x != 0
    return float(((x_hat == 0) & nonzero).sum() / nonzero.sum().clamp_min(1))
