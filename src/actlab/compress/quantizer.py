"""Granularities and the `Quantizer`: fake quantization (quantize-dequantize in float32).

``Quantizer(format, granularity, dynamic=True, clip="none")`` with granularity
``per_tensor`` | ``per_token`` (one scale per row over the last axis) | ``per_channel``
(one scale per index of axis 0, e.g. per output row of a [out, in] weight) |
``per_group:g`` (groups of g along the last axis). Scales: symmetric INT ``absmax/qmax``,
FP ``absmax/finite_max``, NF4 ``absmax``; asymmetric INT ``(max-min)/(2^k-1)`` with a
float zero point (stored offset ``min``, so ``x̂ = q·s + min`` reproduces min exactly and
max up to one float32 rounding).

Static scales: ``calibrate(x)`` accumulates range statistics (running absmax, or running
min/max) over calls, then ``fake_quant`` uses the frozen values. The statistics are shared
over every position whose scale does not depend on the data's leading shape:
``per_tensor`` → one scale; ``per_group:g`` → one scale per channel group (shared over
tokens); ``per_channel`` → one scale per axis-0 index (the calibrated shape must match);
``per_token`` cannot be static (tokens change from input to input).

Clipping: ``clip=r`` (0<r≤1) scales the range by r; ``clip="mse"`` searches r over
``linspace(0.5, 1, 20)`` per scale group minimising ‖x − x̂‖² (for static scales the error
is summed over the calibration calls, using the running range at each call).

``effective_bits(shape)`` = format bits + (scale_bits [+ zero_bits]) × n_scales / n_elements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from actlab.compress.formats import Format, IntFormat, as_float32, parse_format
from actlab.errors import ActlabError, did_you_mean

__all__ = ["Granularity", "Quantizer", "parse_granularity"]


# --------------------------------------------------------------------------- granularity

_GRAN_KINDS = ("per_tensor", "per_token", "per_channel", "per_group")


@dataclass(frozen=True)
class Granularity:
    kind: str
    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _GRAN_KINDS:
            raise ActlabError(f"unknown granularity {self.kind!r}{did_you_mean(self.kind, _GRAN_KINDS)}")
        if self.kind == "per_group":
            if not isinstance(self.group_size, int) or self.group_size < 1:
                raise ActlabError(f"per_group needs a positive group size, got {self.group_size!r}")
        elif self.group_size is not None:
            raise ActlabError(f"{self.kind} takes no group size")

    def __str__(self) -> str:
        return f"per_group:{self.group_size}" if self.kind == "per_group" else self.kind

    def grouped(self, x: torch.Tensor) -> torch.Tensor:
        """A [R, G, g] view: every slice [r, j, :] shares one scale (dynamically)."""
        if x.dim() == 0:
            x = x.reshape(1)
        if self.kind == "per_tensor":
            return x.reshape(1, 1, -1)
        if self.kind == "per_token":
            return x.reshape(-1, 1, x.shape[-1])
        if self.kind == "per_channel":
            return x.reshape(x.shape[0], 1, -1)
        g = self.group_size
        d = x.shape[-1]
        if d % g:
            raise ActlabError(f"per_group:{g}: last dimension {d} is not divisible by {g}")
        return x.reshape(-1, d // g, g)

    def n_scales(self, shape: tuple[int, ...]) -> int:
        shape = tuple(shape) or (1,)
        n = math.prod(shape)
        if self.kind == "per_tensor":
            return 1
        if self.kind == "per_token":
            return n // shape[-1]
        if self.kind == "per_channel":
            return shape[0]
        if shape[-1] % self.group_size:
            raise ActlabError(f"per_group:{self.group_size}: last dimension {shape[-1]} is not divisible")
        return n // self.group_size


def parse_granularity(spec: str | Granularity) -> Granularity:
    if isinstance(spec, Granularity):
        return spec
    s = str(spec).strip().lower()
    if s.startswith("per_group"):
        rest = s[len("per_group"):].lstrip(":")
        if not rest:
            raise ActlabError("per_group needs a group size, e.g. per_group:128")
        try:
            g = int(rest)
        except ValueError:
            raise ActlabError(f"per_group: bad group size {rest!r}") from None
        return Granularity("per_group", g)
    return Granularity(s)


# --------------------------------------------------------------------------- quantizer

MSE_RATIOS = torch.linspace(0.5, 1.0, 20)


class Quantizer:
    """Fake quantizer: format + granularity + (dynamic | static) scales + clipping."""

    def __init__(
        self,
        format: str | Format,
        granularity: str | Granularity = "per_tensor",
        dynamic: bool = True,
        clip: str | float = "none",
        scale_bits: int = 16,
        zero_bits: int | None = None,
    ) -> None:
        self.format = parse_format(format)
        self.granularity = parse_granularity(granularity)
        self.dynamic = bool(dynamic)
        if isinstance(clip, str):
            c = clip.strip().lower()
            if c in ("none", "mse"):
                self.clip: str | float = c
            else:
                try:
                    self.clip = float(c)
                except ValueError:
                    raise ActlabError(f"clip must be 'none', 'mse' or a ratio in (0, 1], got {clip!r}") from None
        else:
            self.clip = float(clip)
        if isinstance(self.clip, float) and not 0 < self.clip <= 1:
            raise ActlabError(f"clip ratio must be in (0, 1], got {self.clip}")
        self.scale_bits = int(scale_bits)
        self.zero_bits = self.scale_bits if zero_bits is None else int(zero_bits)
        if not self.dynamic and self.granularity.kind == "per_token":
            raise ActlabError("per_token scales cannot be static (one scale per token); use per_tensor or per_group")
        self._lo: torch.Tensor | None = None  # static stats (absmax lives in _hi for symmetric)
        self._hi: torch.Tensor | None = None
        self._mse_err: torch.Tensor | None = None

    # ----------------------------------------------------------- parsing / printing
    @classmethod
    def parse(cls, spec: str) -> "Quantizer":
        """'int8:per_token', 'fp8_e4m3:per_tensor:static', 'int4:per_group:128:clip=mse',
        'nf4:per_group:64', options: static|dynamic, clip=none|mse|<ratio>, scale_bits=N."""
        if not isinstance(spec, str) or not spec.strip():
            raise ActlabError(f"empty quantizer spec {spec!r}")
        parts = [p.strip() for p in spec.strip().lower().split(":")]
        fmt = parse_format(parts[0])
        gran: Granularity | None = None
        kw: dict = {}
        i = 1
        while i < len(parts):
            p = parts[i]
            if p == "per_group":
                if i + 1 >= len(parts) or not parts[i + 1].isdigit():
                    raise ActlabError(f"{spec!r}: per_group needs a group size, e.g. per_group:128")
                gran = Granularity("per_group", int(parts[i + 1]))
                i += 2
                continue
            if p in _GRAN_KINDS:
                gran = Granularity(p)
            elif p in ("static", "dynamic"):
                kw["dynamic"] = p == "dynamic"
            elif "=" in p:
                k, v = p.split("=", 1)
                if k == "clip":
                    kw["clip"] = v
                elif k in ("scale_bits", "zero_bits"):
                    if not v.isdigit():
                        raise ActlabError(f"{spec!r}: {k} must be an integer, got {v!r}")
                    kw[k] = int(v)
                else:
                    raise ActlabError(
                        f"{spec!r}: unknown option {k!r}{did_you_mean(k, ['clip', 'scale_bits', 'zero_bits'])}"
                    )
            else:
                opts = [*_GRAN_KINDS, "static", "dynamic", "clip=mse"]
                raise ActlabError(f"{spec!r}: unknown part {p!r}{did_you_mean(p, opts)}")
            i += 1
        return cls(fmt, gran or Granularity("per_tensor"), **kw)

    def __str__(self) -> str:
        s = f"{self.format.name}:{self.granularity}"
        if not self.dynamic:
            s += ":static"
        if self.clip != "none":
            s += f":clip={self.clip}"
        if self.scale_bits != 16:
            s += f":scale_bits={self.scale_bits}"
        return s

    def __repr__(self) -> str:
        return f"Quantizer({str(self)!r})"

    # ----------------------------------------------------------- helpers
    @property
    def asymmetric(self) -> bool:
        return isinstance(self.format, IntFormat) and not self.format.symmetric

    @property
    def calibrated(self) -> bool:
        return self._hi is not None

    def effective_bits(self, shape: tuple[int, ...] | torch.Size) -> float:
        """Bits per element, including the scales (and zero points when asymmetric)."""
        shape = tuple(shape) or (1,)
        n = math.prod(shape)
        if n == 0:
            raise ActlabError("effective_bits of an empty shape")
        if not self.dynamic and self.granularity.kind == "per_group":
            n_scales = shape[-1] // self.granularity.group_size
            self.granularity.n_scales(shape)  # divisibility check
        else:
            n_scales = self.granularity.n_scales(shape)
        per_scale = self.scale_bits + (self.zero_bits if self.asymmetric else 0)
        return self.format.bits + n_scales * per_scale / n

    def _stats(self, xg: torch.Tensor, static_reduce: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo, hi) per scale group: for symmetric formats lo is unused and hi = absmax."""
        dims = (0, 2) if static_reduce and self.granularity.kind == "per_group" else (2,)
        if self.asymmetric:
            return xg.amin(dim=dims, keepdim=True), xg.amax(dim=dims, keepdim=True)
        a = xg.abs().amax(dim=dims, keepdim=True)
        return a, a

    def _qdq(self, xg: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, ratio) -> torch.Tensor:
        """Quantize-dequantize the grouped float32 tensor with range (lo, hi) scaled by ratio."""
        fmt = self.format
        if self.asymmetric:
            lo_c, hi_c = lo * ratio, hi * ratio
            scale = (hi_c - lo_c) / fmt.qmax
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            q = torch.round((xg - lo_c) / scale).clamp(0, fmt.qmax)
            return q * scale + lo_c
        amax = hi * ratio
        qmax = fmt.qmax if isinstance(fmt, IntFormat) else fmt.finite_max
        scale = amax / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return fmt.round(xg / scale) * scale

    def _mse_errors(self, xg: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, static_reduce: bool) -> torch.Tensor:
        dims = (0, 2) if static_reduce and self.granularity.kind == "per_group" else (2,)
        errs = []
        for r in MSE_RATIOS.tolist():
            d = self._qdq(xg, lo, hi, r) - xg
            errs.append(d.square().sum(dim=dims, keepdim=True))
        return torch.stack(errs)  # [n_ratios, *stat shape]

    def _ratio(self, xg, lo, hi, static_reduce: bool):
        if self.clip == "none":
            return 1.0
        if isinstance(self.clip, float):
            return self.clip
        if static_reduce:
            errs = self._mse_err
        else:
            errs = self._mse_errors(xg, lo, hi, False)
        best = errs.argmin(dim=0)
        return MSE_RATIOS.to(xg.device)[best]

    # ----------------------------------------------------------- public API
    def reset(self) -> None:
        self._lo = self._hi = self._mse_err = None

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> "Quantizer":
        """Accumulate static range statistics from calibration data (running min/max/absmax)."""
        if self.dynamic:
            raise ActlabError("calibrate() is for static quantizers; this one is dynamic")
        xg = self.granularity.grouped(as_float32(x.detach()))
        lo, hi = self._stats(xg, static_reduce=True)
        if self._hi is not None:
            if self._hi.shape != hi.shape:
                raise ActlabError(
                    f"calibration shape mismatch for {self.granularity}: stats {tuple(self._hi.shape)} vs {tuple(hi.shape)}"
                )
            lo, hi = torch.minimum(self._lo, lo.to(self._lo.device)), torch.maximum(self._hi, hi.to(self._hi.device))
        self._lo, self._hi = lo, hi
        if self.clip == "mse":
            e = self._mse_errors(xg, lo, hi, True)
            self._mse_err = e if self._mse_err is None else self._mse_err + e
        return self

    @torch.no_grad()
    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize-dequantize: same shape and dtype as x, computed in float32."""
        xf = as_float32(x.detach() if x.requires_grad else x)
        xg = self.granularity.grouped(xf)
        if self.dynamic:
            lo, hi = self._stats(xg, static_reduce=False)
        else:
            if self._hi is None:
                raise ActlabError(f"static quantizer {self} is not calibrated; call calibrate() first")
            lo, hi = self._lo.to(xg.device), self._hi.to(xg.device)
            try:
                torch.broadcast_shapes(hi.shape, xg.shape)
            except RuntimeError:
                raise ActlabError(
                    f"static {self.granularity} scales were calibrated for another shape: "
                    f"{tuple(hi.shape)} vs input groups {tuple(xg.shape)}"
                ) from None
        ratio = self._ratio(xg, lo, hi, static_reduce=not self.dynamic)
        out = self._qdq(xg, lo, hi, ratio)
        return out.reshape(x.shape).to(x.dtype)

    __call__ = fake_quant
