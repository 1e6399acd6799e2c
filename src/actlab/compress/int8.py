"""Real int8 (W8A8) linears on the CPU through `torch._int_mm`.

`Int8Linear` holds int8 weights, symmetric per output channel (scale = absmax / 127), and
quantises its input per token at run time (symmetric, scale = absmax / 127 per row). The product
of the int8 matrices is accumulated exactly in int32 by `torch._int_mm`; one rescale by
`x_scale[:, None] * w_scale[None, :]` (applied as two broadcast multiplies on the float32 result,
the first of which is also the int32 -> float32 conversion), the float bias and a cast back to the
input dtype finish it.

`torch._int_mm` layout on CPU (torch 2.13, checked): int8 `[m, k] @ [k, n] -> int32 [m, n]`, with no
constraint on m, k or n on the CPU (m = 1, 3, 17; k, n not multiples of 8 all work and are exact),
so no row or feature padding is needed. The CUDA kernel does have constraints (m > 16, k and n
multiples of 8); this module targets the CPU and does not pad. The weight is stored as
`[out, in]` contiguous (like `nn.Linear`) and passed as its transpose: oneDNN takes a
"transposed-B" matrix faster (about 1.5 ms against 2.4 ms for 2048 x 576 -> 1536 on 2 threads)
than a row-major `[in, out]` copy.

`w8a8_reference` is the fake-quant twin: the same quantise-dequantise of input and weight in
float32, then `F.linear`. The two agree up to float rounding (the int32 accumulation is exact).

`swap_linears` / `restore_linears` put `Int8Linear` in place of chosen `nn.Linear`s of a model and
back. The usual selection is `decoder_linears`: every linear inside the decoder layers (attention
projections and MLP), not `lm_head` and not the embeddings.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

QMAX = 127
_EPS = 1e-12  # an all-zero row gets a tiny scale: every value quantises to 0, nothing divides by 0

__all__ = ["Int8Linear", "decoder_linears", "default_backend", "quantize_per_channel", "quantize_per_token", "restore_linears",
           "swap_linears", "w8a8_reference"]


def default_backend() -> str:
    """"onednn" (fused per-channel rescale, uint8 activations) where this torch build has oneDNN's
    quantised linear, else "int_mm" (`torch._int_mm`, int32 out, rescale after)."""
    ok = torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")
    return "onednn" if ok else "int_mm"


def quantize_per_token(x: torch.Tensor, zero_point: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation of every row of a 2-d float32 `x`: `(xq [m, k], scale float32 [m])`
    with `x ~= (xq - zero_point) * scale[:, None]` and `scale = absmax / 127` (zero rows get a tiny
    scale). `zero_point=0` gives int8, `zero_point=128` the same values shifted into uint8."""
    amax = torch.maximum(x.amax(-1), x.amin(-1).neg_())  # max |x| without an |x| temporary
    scale = amax.clamp_min_(_EPS).div_(QMAX)
    q = torch.mul(x, scale.reciprocal().unsqueeze(-1)).round_()
    if zero_point:
        return q.add_(zero_point).clamp_(zero_point - QMAX, zero_point + QMAX).to(torch.uint8), scale
    return q.clamp_(-QMAX, QMAX).to(torch.int8), scale


def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation of every output channel (row) of a weight `[out, in]`."""
    return quantize_per_token(w.detach().float())


def _dequant_rows(x: torch.Tensor) -> torch.Tensor:
    q, scale = quantize_per_token(x)
    return q.float() * scale.unsqueeze(-1)


def w8a8_reference(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """The fake-quant twin of `Int8Linear.from_linear(linear)(x)`: per-token input and per-channel weight
    quantise-dequantise in float32, `F.linear`, cast back to `x.dtype`."""
    shape = x.shape
    xd = _dequant_rows(x.reshape(-1, shape[-1]).float())
    wd = _dequant_rows(linear.weight.detach().float())
    bias = None if linear.bias is None else linear.bias.detach().float()
    return F.linear(xd, wd, bias).to(x.dtype).reshape(*shape[:-1], wd.shape[0])


class Int8Linear(nn.Module):
    """A W8A8 linear: int8 weight per output channel, int8 input per token, int32 accumulation."""

    def __init__(self, qweight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        if qweight.dtype != torch.int8 or qweight.dim() != 2:
            raise ValueError("qweight must be a 2-d int8 tensor [out_features, in_features]")
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight.contiguous())  # [out, in]; _int_mm gets its transpose
        self.register_buffer("weight_scale", weight_scale.detach().float().reshape(-1).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self.backend = default_backend()
        self._onednn_weight: torch.Tensor | None = None
        self._zero_points: torch.Tensor | None = None

    def _apply(self, fn, recurse=True):  # a move or cast invalidates the prepacked weight
        self._onednn_weight = None
        return super()._apply(fn, recurse)

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_scale: torch.Tensor | None = None) -> Int8Linear:
        """Quantise `linear.weight` per output channel (absmax / 127, or the given `weight_scale` [out])."""
        w = linear.weight.detach().float()
        if weight_scale is None:
            qweight, weight_scale = quantize_per_channel(w)
        else:
            weight_scale = weight_scale.detach().float().reshape(-1)
            qweight = torch.mul(w, weight_scale.reciprocal().unsqueeze(-1)).round_().clamp_(-QMAX, QMAX)
            qweight = qweight.to(torch.int8)
        return cls(qweight, weight_scale, linear.bias)

    def _packed(self) -> torch.Tensor:
        """The weight prepacked for oneDNN (built on first use; not part of the state dict)."""
        if self._onednn_weight is None:
            self._onednn_weight = torch.ops.onednn.qlinear_prepack(self.qweight, None)
            self._zero_points = torch.zeros(self.out_features, dtype=torch.int64)
        return self._onednn_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.dtype != torch.float32:
            x2 = x2.float()
        if self.backend == "onednn" and x2.device.type == "cpu":
            # uint8 activations with zero point 128 (what oneDNN's x86 int8 matmul takes); the
            # per-channel weight scale is fused into the matmul, the per-token one follows.
            xq, xs = quantize_per_token(x2, zero_point=128)
            out = torch.ops.onednn.qlinear_pointwise(xq, 1.0, 128, self._packed(), self.weight_scale,
                                                     self._zero_points, None, 1.0, 0, torch.float32, "none", [], "")
        else:
            xq, xs = quantize_per_token(x2)
            acc = torch._int_mm(xq, self.qweight.t())  # int32 [m, out], exact
            out = acc.float().mul_(self.weight_scale)
        out.mul_(xs.unsqueeze(-1))
        if self.bias is not None:
            out.add_(self.bias)
        return out.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def decoder_linears(name: str, module: nn.Linear) -> bool:
    """The default selection: every linear inside the decoder layers (`...layers.<i>...` in HF
    Llama-style models, `...h.<i>...` in GPT-2 style), never `lm_head` or embeddings."""
    parts = name.split(".")
    return "lm_head" not in parts and any(p in ("layers", "h", "layer") and i + 1 < len(parts) and parts[i + 1].isdigit()
                                          for i, p in enumerate(parts))


def swap_linears(model: nn.Module, select: Callable[[str, nn.Linear], bool] = decoder_linears) -> dict[str, nn.Module]:
    """Replace every `nn.Linear` of `model` for which `select(name, linear)` holds by its `Int8Linear`,
    in place. Returns `{name: original module}` for `restore_linears`."""
    chosen = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear and select(name, m)]
    originals: dict[str, nn.Module] = {}
    for name, linear in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear.from_linear(linear).to(linear.weight.device))
        originals[name] = linear
    return originals


def restore_linears(model: nn.Module, originals: dict[str, nn.Module]) -> None:
    """Put back the modules that `swap_linears` returned."""
    for name, module in originals.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module)
