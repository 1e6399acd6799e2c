"""Number formats and fake quantization (quantize-dequantize in float32).

Formats
-------
* :class:`IntFormat` — INT-k. Symmetric is the *restricted* symmetric grid
  ``-(2^(k-1)-1) … 2^(k-1)-1`` (e.g. int8: -127…127; the code -128 is unused so the grid is
  symmetric about zero and ``scale = absmax / qmax`` maps ±absmax exactly onto the ends).
  Asymmetric (``uintK``) uses the codes ``0 … 2^k-1`` plus a zero point.
* :class:`FPFormat` — ExMy minifloat with subnormals and a configurable exponent bias
  (default IEEE-style ``2^(e-1)-1``). ``specials`` selects the encoding convention:
  ``"ieee"`` (top exponent reserved for inf/NaN; OCP FP8 E5M2, max 57344), ``"fn"``
  (finite-only, only S.1…1.1…1 is NaN; OCP FP8 E4M3, max 448) or ``"none"`` (every
  encoding is a finite number; OCP MX FP6 E2M3 / E3M2 and FP4 E2M1).
  Rounding is round-to-nearest-even onto the grid and **saturates** to ±``finite_max``
  (inf too); NaN stays NaN. Against torch 2.13's casts: ``float8_e4m3fn`` agrees bit-exactly
  everywhere (it saturates to ±448 as well); ``float8_e5m2`` agrees inside the finite range
  but gives ±inf from |x| ≥ 61440 where we give ±57344.
* :data:`NF4` — the 16 QLoRA NormalFloat levels (Dettmers et al., arXiv 2305.14314) in
  [-1, 1]; rounding to the nearest level, exact ties go to the level of smaller magnitude
  index (the lower level).

Granularities and the `Quantizer` live in `actlab.compress.quantizer`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from actlab.errors import ActlabError, did_you_mean

__all__ = [
    "IntFormat",
    "FPFormat",
    "NF4Format",
    "NF4",
    "NF4_LEVELS",
    "parse_format",
    "FORMAT_NAMES",
]


def as_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32) if x.dtype != torch.float32 else x


def _round_to_levels(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Nearest value of the sorted `levels` (ties to the lower level); NaN stays NaN."""
    levels = levels.to(device=x.device, dtype=torch.float32)
    mids = (levels[1:] + levels[:-1]) / 2
    idx = torch.bucketize(x, mids)
    out = levels[idx]
    return torch.where(torch.isnan(x), x, out)


# --------------------------------------------------------------------------- formats


@dataclass(frozen=True)
class IntFormat:
    """INT-k. Symmetric: restricted grid -(2^(k-1)-1)…2^(k-1)-1. Asymmetric: 0…2^k-1 + zero point."""

    bits: int
    symmetric: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 16:
            raise ActlabError(f"INT format needs 2..16 bits, got {self.bits!r}")

    @property
    def name(self) -> str:
        return f"{'int' if self.symmetric else 'uint'}{self.bits}"

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    def levels(self) -> torch.Tensor:
        return torch.arange(self.qmin, self.qmax + 1, dtype=torch.float32)

    def round(self, x_scaled: torch.Tensor) -> torch.Tensor:
        """Round half to even onto the integer codes, clamped to [qmin, qmax]."""
        return torch.round(as_float32(x_scaled)).clamp(self.qmin, self.qmax)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class FPFormat:
    """ExMy minifloat (1 sign bit) with subnormals; see the module docstring for `specials`."""

    exp_bits: int
    man_bits: int
    bias: int | None = None
    specials: str = "none"  # "ieee" | "fn" | "none"
    name: str = ""

    def __post_init__(self) -> None:
        if not (1 <= self.exp_bits <= 8 and 0 <= self.man_bits <= 10):
            raise ActlabError(f"FP format needs 1..8 exponent and 0..10 mantissa bits, got e{self.exp_bits}m{self.man_bits}")
        if self.specials not in ("ieee", "fn", "none"):
            raise ActlabError(f"FP specials must be 'ieee', 'fn' or 'none', got {self.specials!r}")
        if self.specials == "fn" and self.man_bits < 1:
            raise ActlabError("FP 'fn' convention needs at least one mantissa bit")
        if self.specials == "ieee" and self.exp_bits < 2:
            raise ActlabError("FP 'ieee' convention needs at least two exponent bits")
        if self.bias is None:
            object.__setattr__(self, "bias", 2 ** (self.exp_bits - 1) - 1)
        if not self.name:
            object.__setattr__(self, "name", f"e{self.exp_bits}m{self.man_bits}")

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number (subnormals share it)."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        top = 2**self.exp_bits - 1
        return (top - 1 if self.specials == "ieee" else top) - self.bias

    @property
    def finite_max(self) -> float:
        m = self.man_bits
        frac = 2 - 2 ** (1 - m) if self.specials == "fn" else 2 - 2.0**-m
        return math.ldexp(frac, self.emax)

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        return math.ldexp(1.0, self.emin - self.man_bits)

    def levels(self) -> torch.Tensor:
        """All finite representable values, sorted (zero once)."""
        if self.bits > 12:
            raise ActlabError(f"{self.name}: too many values to list; use round()")
        m = self.man_bits
        pos = [math.ldexp(k, self.emin - m) for k in range(2**m)]  # zero + subnormals
        for e in range(self.emin, self.emax + 1):
            pos += [math.ldexp(1 + k / 2**m, e) for k in range(2**m)]
        pos = sorted({v for v in pos if v <= self.finite_max})
        vals = [-v for v in reversed(pos) if v != 0] + pos
        return torch.tensor(vals, dtype=torch.float32)

    def round(self, x_scaled: torch.Tensor) -> torch.Tensor:
        """Round-to-nearest-even onto the grid in float32, saturating to ±finite_max."""
        x = as_float32(x_scaled)
        a = x.abs().clamp(max=self.finite_max)  # inf -> max; NaN stays NaN
        _, e2 = torch.frexp(a)  # a = f * 2^e2, f in [0.5, 1)  => exponent e2 - 1
        e = (e2 - 1).clamp(min=self.emin)
        q = torch.ldexp(torch.ones_like(a), (e - self.man_bits).to(torch.float32))
        r = torch.round(a / q) * q  # a/q and r are exact: q is a power of two
        r = r.clamp(max=self.finite_max)
        return torch.copysign(r, x)

    def __str__(self) -> str:
        return self.name


# QLoRA NF4 values as published in bitsandbytes (create_normal_map, offset 0.9677083).
NF4_LEVELS: tuple[float, ...] = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)


@dataclass(frozen=True)
class NF4Format:
    """4-bit NormalFloat: 16 fixed levels in [-1, 1]; scale = absmax of the group."""

    name: str = "nf4"
    bits: int = 4
    finite_max: float = 1.0

    def levels(self) -> torch.Tensor:
        return torch.tensor(NF4_LEVELS, dtype=torch.float32)

    def round(self, x_scaled: torch.Tensor) -> torch.Tensor:
        return _round_to_levels(as_float32(x_scaled), self.levels())

    def __str__(self) -> str:
        return self.name


NF4 = NF4Format()

Format = IntFormat | FPFormat | NF4Format

_NAMED_FP = {
    "fp8_e4m3": FPFormat(4, 3, specials="fn", name="fp8_e4m3"),
    "fp8_e5m2": FPFormat(5, 2, specials="ieee", name="fp8_e5m2"),
    "fp6_e2m3": FPFormat(2, 3, specials="none", name="fp6_e2m3"),
    "fp6_e3m2": FPFormat(3, 2, specials="none", name="fp6_e3m2"),
    "fp4_e2m1": FPFormat(2, 1, specials="none", name="fp4_e2m1"),
}
_ALIASES = {
    "fp8": "fp8_e4m3",
    "e4m3": "fp8_e4m3",
    "fp8_e4m3fn": "fp8_e4m3",
    "e4m3fn": "fp8_e4m3",
    "e5m2": "fp8_e5m2",
    "e2m3": "fp6_e2m3",
    "e3m2": "fp6_e3m2",
    "fp4": "fp4_e2m1",
    "e2m1": "fp4_e2m1",
}
FORMAT_NAMES: tuple[str, ...] = (
    "int2", "int3", "int4", "int8", "uint4", "uint8", *_NAMED_FP, "nf4", *_ALIASES,
)


def parse_format(name: str | Format) -> Format:
    """A format from its name: intK / uintK (K 2..16), fp8_e4m3, fp8_e5m2, fp6_e2m3, fp6_e3m2,
    fp4_e2m1, nf4, short aliases (e4m3, e5m2, e2m1, fp8, fp4 …) or a generic 'eXmY'
    (IEEE-style bias, all encodings finite)."""
    if isinstance(name, (IntFormat, FPFormat, NF4Format)):
        return name
    if not isinstance(name, str):
        raise ActlabError(f"format must be a name, got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in _NAMED_FP:
        return _NAMED_FP[key]
    if key == "nf4":
        return NF4
    m = re.fullmatch(r"(u?)int(\d+)", key)
    if m:
        bits = int(m.group(2))
        if not 2 <= bits <= 16:
            raise ActlabError(f"unknown format {name!r}: integer formats take 2..16 bits")
        return IntFormat(bits, symmetric=not m.group(1))
    m = re.fullmatch(r"(?:fp\d+_)?e(\d+)m(\d+)", key)
    if m:
        fmt = FPFormat(int(m.group(1)), int(m.group(2)))
        if key.startswith("fp") and not key.startswith(f"fp{fmt.bits}_"):
            raise ActlabError(f"unknown format {name!r}: e{fmt.exp_bits}m{fmt.man_bits} has {fmt.bits} bits")
        return fmt
    raise ActlabError(f"unknown format {name!r}{did_you_mean(key, FORMAT_NAMES)}")
