"""`QuantLinear`: a linear layer with online input ops and fake (or real int8) quantization.

A recipe swaps every targeted `nn.Linear` of a copy of the model for a `QuantLinear`. Its input
runs through `ops` in order (a per-channel shift, a per-channel multiplier, a matrix), then the
input quantizer, then `F.linear` with the (already quantize-dequantized) weight. Transforms that
cannot be folded into the layer that produces the input (a norm, a projection) live in `ops`;
with no ops and no quantizers a `QuantLinear` computes exactly what the original linear did.
`kernel`, when set, is an `Int8Linear` that replaces the fake path by a real int8 matmul.
`lowrank`, when set, is a pair `(A [r, in], B [out, r])` whose residual path `(x A^T) B^T` runs on
the input after the ops and before input quantization (EoRA / SVD compensation, `compress.lowrank`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class QuantLinear(nn.Module):
    """`y = quantize(ops(x)) @ weight.T + bias`; see the module docstring."""

    def __init__(self, linear: nn.Linear, name: str) -> None:
        super().__init__()
        self.name = name  # short name, e.g. "blocks.3.mlp.down_proj"
        self.site: str | None = None  # the input site its group reads, e.g. "blocks.3.mlp.act"
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the model is a private copy: take the parameter over
        self.bias = linear.bias
        self.ops: list[tuple[str, torch.Tensor]] = []  # float64, so that merged ops stay exact
        self._ops_cast: dict[torch.dtype, list[tuple[str, torch.Tensor]]] = {}  # ops in the input dtype, built once
        self.input_quantizer: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.weight_quantizer: object | None = None  # what quantized the weight (for reports)
        self.kernel: nn.Module | None = None
        self.observers: list[Callable[["QuantLinear", torch.Tensor], None]] = []
        self.quantize_inputs = True  # off while static scales are calibrated on float inputs
        self.cross_alpha: float | None = None  # set by CrossQuant: its input quantizer crosses rows and columns
        self.column_pow2: torch.Tensor | None = None  # LLM-FP4: power-of-two column factors held in the exponent bias
        self.lowrank: tuple[torch.Tensor, torch.Tensor] | None = None  # (A, B): y += (x A^T) B^T
        self.input_clip: float | None = None  # FlatQuant: learned clip ratio of the input quantizer (QuantSpec.apply)
        self.weight_clip: torch.Tensor | None = None  # FlatQuant: learned clip ratio per weight row (clip_weight)

    # ------------------------------------------------------------- input ops
    def add_op(self, kind: str, value: torch.Tensor) -> None:
        """Append an online op ("shift": x - v, "mul": x * v, "matmul": x @ v), merging it into
        the last op when both are of the same kind."""
        value = value.detach().to(torch.float64)
        if self.ops and self.ops[-1][0] == kind:
            last = self.ops[-1][1]
            merged = {"shift": lambda: last + value, "mul": lambda: last * value, "matmul": lambda: last @ value}[kind]()
            self.ops[-1] = (kind, merged)
        else:
            self.ops.append((kind, value))
        self._ops_cast.clear()

    def apply_ops(self, x2: torch.Tensor) -> torch.Tensor:
        ops = self._ops_cast.get(x2.dtype)
        if ops is None:
            ops = self._ops_cast[x2.dtype] = [(kind, v.to(x2.dtype)) for kind, v in self.ops]
        for kind, v in ops:
            x2 = x2 - v if kind == "shift" else x2 * v if kind == "mul" else x2 @ v
        return x2

    @torch.no_grad()
    def clip_weight(self) -> None:
        """Clamp each weight row to `weight_clip` × its absmax (no-op without learned ratios). For
        a symmetric absmax quantizer per output channel this equals clipping its range by the ratio."""
        if self.weight_clip is not None:
            bound = self.weight.abs().amax(1, keepdim=True) * self.weight_clip.to(self.weight.dtype)[:, None]
            self.weight.data = torch.minimum(torch.maximum(self.weight, -bound), bound)

    # ------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = self.apply_ops(x.reshape(-1, shape[-1]))
        for observe in self.observers:
            observe(self, x2)
        if self.kernel is not None:
            out = self.kernel(x2)
        elif self.input_quantizer is not None and self.quantize_inputs:
            out = F.linear(self.input_quantizer(x2), self.weight, self.bias)
        else:
            out = F.linear(x2, self.weight, self.bias)
        if self.lowrank is not None:
            a, b = self.lowrank
            out = out + (x2 @ a.T) @ b.T
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        ops = ",".join(k for k, _ in self.ops) or "none"
        return (f"{self.name}: in={self.in_features}, out={self.out_features}, ops={ops}, "
                f"w={self.weight_quantizer}, a={self.input_quantizer}, kernel={type(self.kernel).__name__ if self.kernel else None}, "
                f"lowrank={self.lowrank[0].shape[0] if self.lowrank is not None else None}")


def swap_in(model: nn.Module, select: Callable[[str, nn.Linear], str | None]) -> list[QuantLinear]:
    """Replace every `nn.Linear` for which `select(name, module)` gives a short name by a
    `QuantLinear` of that name, in place; returns them in module order."""
    chosen = []
    for name, module in model.named_modules():
        if type(module) is nn.Linear:
            short = select(name, module)
            if short is not None:
                chosen.append((name, short, module))
    swapped = []
    for name, short, linear in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        q = QuantLinear(linear, short)
        setattr(parent, child, q)
        swapped.append(q)
    return swapped
