"""Calibration passes: run token windows through the model while observers on the `QuantLinear`s
collect what a transform or quantizer needs.

`ChannelStats` keeps, for one group's input (after its online ops), the per-channel min, max and
absmax, the raw moments of all elements (for kurtosis) and a bounded random sample of rows (for
searches that minimise a layer's output error).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch

from actlab.compress.groups import LinearGroup
from actlab.compress.qlinear import QuantLinear
from actlab.eval.common import progress_bar


class ChannelStats:
    """Streaming per-channel range, element moments and a row sample of one input."""

    def __init__(self, dim: int, sample_rows: int = 0, seed: int = 0) -> None:
        self.amin = torch.full((dim,), torch.inf, dtype=torch.float64)
        self.amax = torch.full((dim,), -torch.inf, dtype=torch.float64)
        self.moments = torch.zeros(5, dtype=torch.float64)  # n, sum x, x^2, x^3, x^4
        self.sample_rows = sample_rows
        self.rows: list[torch.Tensor] = []
        self._n_rows = 0
        self._gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def update(self, x2: torch.Tensor) -> None:
        x = x2.detach().double()
        self.amin = torch.minimum(self.amin, x.amin(0))
        self.amax = torch.maximum(self.amax, x.amax(0))
        p = x.flatten()
        self.moments += torch.stack([torch.tensor(float(p.numel()), dtype=torch.float64), p.sum(),
                                     p.square().sum(), p.pow(3).sum(), p.pow(4).sum()])
        if self._n_rows < self.sample_rows:
            take = min(self.sample_rows - self._n_rows, max(1, x.shape[0] // 8))
            idx = torch.randperm(x.shape[0], generator=self._gen)[:take]
            self.rows.append(x2.detach().float()[idx].clone())
            self._n_rows += take

    @property
    def absmax(self) -> torch.Tensor:
        return torch.maximum(self.amax, -self.amin)

    @property
    def kurtosis(self) -> float:
        """Kurtosis of all elements (3 for a Gaussian), from raw moments."""
        n, s1, s2, s3, s4 = self.moments.tolist()
        mu = s1 / n
        m2 = s2 / n - mu**2
        m4 = s4 / n - 4 * mu * s3 / n + 6 * mu**2 * s2 / n - 3 * mu**4
        return m4 / m2**2 if m2 > 0 else float("nan")

    def sample(self) -> torch.Tensor:
        return torch.cat(self.rows) if self.rows else torch.empty(0)

    def outlier_channels(self, factor: float = 20.0) -> list[int]:
        """Channels whose absmax exceeds `factor` × the median channel absmax."""
        a = self.absmax
        return torch.nonzero(a > factor * a.median()).flatten().tolist()


@contextmanager
def observing(linears: Sequence[QuantLinear], observe: Callable[[QuantLinear, torch.Tensor], None]):
    for q in linears:
        q.observers.append(observe)
    try:
        yield
    finally:
        for q in linears:
            q.observers.remove(observe)


@torch.inference_mode()
def run_windows(model, windows: torch.Tensor, batch_size: int = 4, progress: bool = False, desc: str = "calibrate",
                lm_head: bool = False) -> None:
    """Forward every window; the decoder only (no logits) unless `lm_head` is observed too."""
    body = model.model if hasattr(model, "model") and not lm_head else model
    with progress_bar(len(windows), desc, progress) as advance:
        for start in range(0, len(windows), batch_size):
            batch = windows[start:start + batch_size]
            body(input_ids=batch)
            advance(len(batch))


def group_stats(model, groups: Sequence[LinearGroup], windows: torch.Tensor, sample_rows: int = 0,
                batch_size: int = 4, progress: bool = False, desc: str = "statistics") -> dict[str, ChannelStats]:
    """`ChannelStats` of every group's input (observed at its first linear) over `windows`."""
    stats = {g.name: ChannelStats(g.dim, sample_rows, seed=i) for i, g in enumerate(groups)}
    first = {id(g.linears[0]): stats[g.name] for g in groups}

    def observe(q, x2):
        s = first.get(id(q))
        if s is not None:
            s.update(x2)
    with observing([g.linears[0] for g in groups], observe):
        run_windows(model, windows, batch_size, progress, desc, lm_head=any(g.block is None for g in groups))
    return stats
