"""Streaming per-channel statistics, updated batch by batch and merged exactly.

Moments use the pairwise update of Chan et al. and its higher-order form (Pébay, "Formulas for
robust, one-pass parallel computation of covariances and arbitrary-order statistical
moments", SAND2008-6212): merging the statistics of two parts gives the statistics of the
whole, whatever the split, so batches and workers combine in any order. Histograms (token
norms, |x| for approximate quantiles) have fixed log-spaced bins, so they merge by addition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

# Log-spaced histogram bins for |x| and token norms: 4 bins per power of two from 2^-24 to 2^24,
# plus a first bin for [0, 2^-24). Fixed edges, so histograms merge by addition.
_SUB, _EMIN, _EMAX = 4, -23, 25
HIST_EDGES = np.concatenate([[0.0], [2.0 ** (e - 1) * (1 + k / _SUB) for e in range(_EMIN, _EMAX) for k in range(_SUB)],
                             [2.0 ** (_EMAX - 1)]])


ABS_HIST_STRIDE = 8  # the |x| histogram (for approximate quantiles) counts every 8th token


def _sum64(t: torch.Tensor) -> torch.Tensor:
    """Column sums of a float32 batch (torch reduces with cascade summation), as float64."""
    return t.sum(0).double()


def _hist(values: torch.Tensor) -> np.ndarray:
    """Counts of |values| per bin of HIST_EDGES (values beyond the last edge go to the last bin)."""
    mantissa, exponent = torch.frexp(values.float().abs().flatten())  # |v| = m·2^e, m in [0.5, 1)
    sub = ((mantissa - 0.5) * (2 * _SUB)).to(torch.int64).clamp(0, _SUB - 1)
    idx = 1 + (exponent.to(torch.int64) - _EMIN) * _SUB + sub
    idx = torch.where(mantissa == 0, 0, idx).clamp(0, len(HIST_EDGES) - 2)
    return torch.bincount(idx, minlength=len(HIST_EDGES) - 1).numpy().astype(np.int64)


@dataclass
class SiteStats:
    """Per-channel count, mean, M2..M4, min, max; token-norm and |x| histograms; optional covariance."""

    channels: int
    covariance: bool = False
    n: int = 0
    mean: np.ndarray = field(default=None)
    m2: np.ndarray = field(default=None)
    m3: np.ndarray = field(default=None)
    m4: np.ndarray = field(default=None)
    min: np.ndarray = field(default=None)
    max: np.ndarray = field(default=None)
    comoment: np.ndarray | None = None  # Σ (x-mean)(x-mean)ᵀ
    norm_hist: np.ndarray = field(default=None)
    abs_hist: np.ndarray = field(default=None)
    codec_sq_error: float = 0.0  # Σ (stored − recorded)², filled by the store's writer

    def __post_init__(self):
        c = self.channels
        zeros = lambda: np.zeros(c, dtype=np.float64)  # noqa: E731
        for name in ("mean", "m2", "m3", "m4"):
            if getattr(self, name) is None:
                setattr(self, name, zeros())
        if self.min is None:
            self.min, self.max = np.full(c, np.inf), np.full(c, -np.inf)
        if self.covariance and self.comoment is None:
            self.comoment = np.zeros((c, c), dtype=np.float64)
        if self.norm_hist is None:
            self.norm_hist = np.zeros(len(HIST_EDGES) - 1, dtype=np.int64)
            self.abs_hist = np.zeros(len(HIST_EDGES) - 1, dtype=np.int64)

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def of(cls, x: torch.Tensor, covariance: bool = False) -> "SiteStats":
        """Statistics of one batch `[n, channels]`: float32 elementwise work, float64 sums."""
        x = x.reshape(x.shape[0], -1).float()
        s = cls(x.shape[1], covariance)
        if x.shape[0] == 0:
            return s
        mean = _sum64(x) / x.shape[0]
        d = x - mean.float()  # centred in float32; batch sums in float32, merged in float64
        shift = _sum64(d) / x.shape[0]  # the float32 rounding of the mean, corrected below
        d2 = d * d
        s.n = x.shape[0]
        s.mean = (mean + shift).numpy()
        s.m2 = (_sum64(d2) - x.shape[0] * shift**2).numpy()
        s.m3, s.m4 = _sum64(d2 * d).numpy(), _sum64(d2 * d2).numpy()
        s.min, s.max = x.amin(0).double().numpy(), x.amax(0).double().numpy()
        if covariance:
            dd = d.double()
            s.comoment = (dd.T @ dd).numpy()
        s.norm_hist, s.abs_hist = _hist(x.norm(dim=1)), _hist(x[::ABS_HIST_STRIDE])
        return s

    def update(self, x: torch.Tensor) -> None:
        self.merge(SiteStats.of(x, self.covariance))

    def merge(self, other: "SiteStats") -> None:
        """Fold `other` into self: afterwards self describes both parts together."""
        na, nb = self.n, other.n
        if nb == 0:
            return
        if na == 0:
            self.__dict__.update({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in other.__dict__.items()})
            return
        n = na + nb
        delta = other.mean - self.mean
        m2 = self.m2 + other.m2 + delta**2 * na * nb / n
        m3 = (self.m3 + other.m3 + delta**3 * na * nb * (na - nb) / n**2
              + 3 * delta * (na * other.m2 - nb * self.m2) / n)
        m4 = (self.m4 + other.m4 + delta**4 * na * nb * (na * na - na * nb + nb * nb) / n**3
              + 6 * delta**2 * (na * na * other.m2 + nb * nb * self.m2) / n**2
              + 4 * delta * (na * other.m3 - nb * self.m3) / n)
        if self.covariance:
            self.comoment = self.comoment + other.comoment + np.outer(delta, delta) * na * nb / n
        self.mean = self.mean + delta * nb / n
        self.m2, self.m3, self.m4, self.n = m2, m3, m4, n
        self.min, self.max = np.minimum(self.min, other.min), np.maximum(self.max, other.max)
        self.norm_hist = self.norm_hist + other.norm_hist
        self.abs_hist = self.abs_hist + other.abs_hist
        self.codec_sq_error += other.codec_sq_error

    # -- reading -------------------------------------------------------------------------------
    @property
    def var(self) -> np.ndarray:
        """Population variance per channel."""
        return self.m2 / max(self.n, 1)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)

    @property
    def absmax(self) -> np.ndarray:
        return np.maximum(np.abs(self.min), np.abs(self.max))

    @property
    def kurtosis(self) -> np.ndarray:
        """Pearson kurtosis n·M4/M2² per channel (3 for a Gaussian; 0 where the channel is constant)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            k = self.n * self.m4 / self.m2**2
        return np.nan_to_num(k, nan=0.0, posinf=0.0)

    @property
    def cov(self) -> np.ndarray:
        if not self.covariance:
            raise ValueError("covariance was not collected (harvest with covariance=True)")
        return self.comoment / max(self.n, 1)

    @property
    def codec_relative_error(self) -> float:
        """RMS error of the stored values relative to the RMS of the recorded ones (0 for float32)."""
        total = float((self.m2 + self.n * self.mean**2).sum())
        return float(np.sqrt(self.codec_sq_error / total)) if total > 0 else 0.0

    def abs_quantile(self, q: float) -> float:
        """Approximate quantile of |x| (every 8th token; log-bin histogram, geometric interpolation)."""
        return _hist_quantile(self.abs_hist, q)

    def norm_quantile(self, q: float) -> float:
        return _hist_quantile(self.norm_hist, q)

    # -- storage -------------------------------------------------------------------------------
    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {f"{prefix}/{k}": torch.from_numpy(np.asarray(getattr(self, k)))
               for k in ("mean", "m2", "m3", "m4", "min", "max", "norm_hist", "abs_hist")}
        out[f"{prefix}/n"] = torch.tensor([self.n], dtype=torch.int64)
        out[f"{prefix}/codec_sq_error"] = torch.tensor([self.codec_sq_error], dtype=torch.float64)
        if self.covariance:
            out[f"{prefix}/comoment"] = torch.from_numpy(self.comoment)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> "SiteStats":
        get = lambda k: tensors[f"{prefix}/{k}"].numpy()  # noqa: E731
        cov_key = f"{prefix}/comoment"
        s = cls(len(get("mean")), cov_key in tensors)
        for k in ("mean", "m2", "m3", "m4", "min", "max", "norm_hist", "abs_hist"):
            setattr(s, k, get(k).copy())
        s.n = int(get("n")[0])
        s.codec_sq_error = float(get("codec_sq_error")[0])
        if s.covariance:
            s.comoment = get("comoment").copy()
        return s


def _hist_quantile(hist: np.ndarray, q: float) -> float:
    total = hist.sum()
    if total == 0:
        return float("nan")
    cum = np.cumsum(hist)
    i = int(np.searchsorted(cum, q * total, side="left"))
    i = min(i, len(hist) - 1)
    lo, hi = HIST_EDGES[i], HIST_EDGES[i + 1]
    before = cum[i - 1] if i > 0 else 0
    frac = (q * total - before) / max(hist[i], 1)
    if lo == 0:
        return float(hi * frac)
    return float(lo * (hi / lo) ** frac)
