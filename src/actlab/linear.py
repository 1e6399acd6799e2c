"""Small linear models in float64 torch shared by the method families (steering directions, probes)."""

from __future__ import annotations

import torch


def logistic_fit(z: torch.Tensor, y: torch.Tensor, c: float | None, max_iter: int = 500) -> tuple[torch.Tensor, float]:
    """(w, b) minimising Σ log-loss(z·w + b, y) + |w|² / (2c) in float64 by L-BFGS (no penalty if c is None)."""
    z, y = z.double(), y.double()
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")
    n = len(y)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y, reduction="sum")
        if c is not None:
            loss = loss + (w @ w) / (2 * c)
        loss = loss / n
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), float(b.detach())
