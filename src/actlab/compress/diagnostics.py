"""Per-layer quantization diagnostics, gathered while a recipe calibrates (`diagnostics=True`).

Per group input (`blocks.3.attn.in`, …): outlier channels and kurtosis before any transform,
kurtosis after the transforms, and per linear the quantization kernel (share of non-zero input
elements that quantize to zero; CrossQuant's metric) and the relative output error
`||y_q - y||² / ||y||²` of the quantized layer against its float twin (after the transforms).
Measured on the first `windows` calibration windows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from actlab.compress.calibration import group_stats, observing, run_windows
from actlab.compress.crossquant import quantization_kernel


class LayerDiagnostics:
    def __init__(self, state, windows: int = 4) -> None:
        self.state = state
        self.ids = state.windows[:windows]
        self.groups = [g for g in state.groups if g.block is not None]
        self.before = self._stats("diagnostics: before")
        self.after = None
        self.float_weights: dict[str, torch.Tensor] = {}

    def _stats(self, desc: str):
        s = self.state
        return group_stats(s.model, self.groups, self.ids, 0, s.batch_size, s.progress, desc)

    def after_transforms(self) -> None:
        self.after = self._stats("diagnostics: after transforms")
        self.float_weights = {q.name: q.weight.detach().clone() for g in self.groups for q in g.linears}

    @torch.no_grad()
    def finish(self) -> list[dict]:
        sums: dict[str, list[float]] = {name: [0.0, 0.0, 0.0, 0.0] for name in self.float_weights}

        def observe(q, x2):
            if q.name not in sums:
                return
            x = x2.float()
            x_hat = q.input_quantizer(x2).float() if q.input_quantizer is not None else x
            y = F.linear(x, self.float_weights[q.name].float())
            y_hat = q.kernel(x2).float() if q.kernel is not None else F.linear(x_hat, q.weight.float())
            acc = sums[q.name]
            acc[0] += float((y_hat - y).square().sum())
            acc[1] += float(y.square().sum())
            acc[2] += quantization_kernel(x, x_hat) * x.numel() if q.kernel is None else 0.0
            acc[3] += x.numel()

        linears = [q for g in self.groups for q in g.linears]
        with observing(linears, observe):
            run_windows(self.state.model, self.ids, self.state.batch_size, self.state.progress, "diagnostics: errors")
        rows = []
        for g in self.groups:
            before, after = self.before[g.name], self.after[g.name]
            outliers = before.outlier_channels()
            rows.append({
                "group": g.name, "linears": [q.name.rsplit(".", 1)[-1] for q in g.linears],
                "outlier_channels": outliers[:8], "n_outlier_channels": len(outliers),
                "absmax_before": float(before.absmax.max()), "absmax_after": float(after.absmax.max()),
                "kurtosis_before": before.kurtosis, "kurtosis_after": after.kurtosis,
                "kernel_pct": 100 * sum(sums[q.name][2] for q in g.linears) / max(1.0, sum(sums[q.name][3] for q in g.linears)),
                "rel_mse": max(sums[q.name][0] / max(sums[q.name][1], 1e-30) for q in g.linears),
                "folded": list(g.folded),
            })
        self.float_weights.clear()
        return rows
