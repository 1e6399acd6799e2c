"""Number formats and fake quantization on known values (actlab.compress.formats)."""

from __future__ import annotations

import math

import pytest
import torch

from actlab.compress import (
    NF4,
    NF4_LEVELS,
    FPFormat,
    Granularity,
    IntFormat,
    Quantizer,
    parse_format,
)
from actlab.errors import ActlabError


# ------------------------------------------------------------------ grids


def test_fp4_e2m1_levels_exact():
    f = parse_format("fp4_e2m1")
    pos = {0, 0.5, 1, 1.5, 2, 3, 4, 6}
    assert f.levels().tolist() == sorted({*pos, *(-v for v in pos)})
    assert f.finite_max == 6 and f.bits == 4 and f.bias == 1
    assert parse_format("e2m1") is f


def test_fp8_fp6_constants():
    e4m3, e5m2 = parse_format("fp8_e4m3"), parse_format("fp8_e5m2")
    assert e4m3.finite_max == 448 and e4m3.bias == 7
    assert e4m3.min_subnormal == 2.0**-9 and e4m3.min_normal == 2.0**-6
    assert e5m2.finite_max == 57344 and e5m2.bias == 15 and e5m2.min_subnormal == 2.0**-16
    assert parse_format("fp6_e2m3").finite_max == 7.5
    assert parse_format("fp6_e3m2").finite_max == 28
    # all 256 e4m3fn codes minus 2 NaNs and a duplicate zero = 253 values; e5m2 drops inf/NaN
    assert len(e4m3.levels()) == 253
    assert len(e5m2.levels()) == 256 - 2 * 4 - 1  # inf + 3 NaN per sign, dup zero
    assert len(parse_format("fp6_e2m3").levels()) == 63


def test_fp_levels_match_torch_dtypes():
    for name, dt in (("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)):
        allcodes = torch.arange(256, dtype=torch.uint8).view(dt).float()
        finite = allcodes[torch.isfinite(allcodes)].unique()
        assert torch.equal(finite, parse_format(name).levels()), name


def test_configurable_bias():
    f = FPFormat(4, 3, bias=8, specials="fn")
    assert f.finite_max == 224 and f.min_subnormal == 2.0**-10
    x = torch.tensor([1000.0, 3 * 2.0**-11, 1.0625])
    assert f.round(x).tolist() == [224.0, 2.0**-9, 1.0]  # saturate, tie-to-even, tie-to-even


def _torch_cast(x, dt):
    return x.to(dt).to(torch.float32)


@pytest.mark.parametrize("name,dt", [("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)])
def test_fp8_rounding_bit_exact_vs_torch(name, dt):
    f = parse_format(name)
    g = torch.Generator().manual_seed(0)
    mx = f.finite_max
    # log-uniform magnitudes across the whole range incl. subnormals, random signs
    mag = torch.exp2(torch.empty(200_000).uniform_(math.log2(f.min_subnormal) - 2, math.log2(mx), generator=g))
    x = mag * torch.where(torch.rand(200_000, generator=g) < 0.5, -1.0, 1.0)
    # exact ties: midpoints between consecutive representable values
    lv = f.levels().double()
    mids = ((lv[1:] + lv[:-1]) / 2).float()
    assert torch.equal(mids.double(), (lv[1:] + lv[:-1]) / 2)  # midpoints are exact in fp32
    x = torch.cat([x, mids, f.levels(), torch.tensor([0.0, -0.0, mx, -mx])])
    ours, ref = f.round(x), _torch_cast(x, dt)
    assert torch.equal(ours.view(torch.int32), ref.view(torch.int32))
    # ties really go to even: 1 + 2^-(m+1) rounds down to 1, 1 + 3*2^-(m+1) rounds up
    m = f.man_bits
    t = torch.tensor([1 + 2.0 ** -(m + 1), 1 + 3 * 2.0 ** -(m + 1)])
    assert f.round(t).tolist() == [1.0, 1 + 2 * 2.0 ** -m]


def test_fp8_saturation_documented():
    e4m3, e5m2 = parse_format("fp8_e4m3"), parse_format("fp8_e5m2")
    big = torch.tensor([449.0, 470.0, 1e6, float("inf"), -float("inf")])
    assert e4m3.round(big).tolist() == [448, 448, 448, 448, -448]
    # torch 2.13's e4m3fn cast saturates the same way (inf included)
    assert torch.equal(_torch_cast(big, torch.float8_e4m3fn), e4m3.round(big))
    # e5m2: we saturate; torch rounds to 57344 below 61440 and gives inf from 61440 on
    b5 = torch.tensor([60000.0, 61440.0, 1e9, -float("inf")])
    assert e5m2.round(b5).tolist() == [57344, 57344, 57344, -57344]
    assert _torch_cast(b5, torch.float8_e5m2).tolist() == [57344, float("inf"), float("inf"), -float("inf")]
    assert math.isnan(e4m3.round(torch.tensor([float("nan")])).item())


def test_fp_rounding_matches_nearest_level_small_formats():
    g = torch.Generator().manual_seed(1)
    for name in ("fp4_e2m1", "fp6_e2m3", "fp6_e3m2"):
        f = parse_format(name)
        lv = f.levels()
        x = torch.empty(5000).uniform_(-1.2 * f.finite_max, 1.2 * f.finite_max, generator=g)
        r = f.round(x)
        assert torch.isin(r, lv).all()
        best = (x[:, None] - lv[None]).abs().min(dim=1).values
        assert torch.equal((x - r).abs(), best)
    # e2m1 ties to even: 2.5 -> 2, 3.5 -> 4, 5 -> 4, 0.25 -> 0, 0.75 -> 1, 1.25 -> 1
    f = parse_format("fp4_e2m1")
    assert f.round(torch.tensor([2.5, 3.5, 5.0, 0.25, 0.75, 1.25, -5.0, 7.0])).tolist() == [
        2, 4, 4, 0, 1, 1, -4, 6,
    ]


def test_nf4_levels_published_and_from_normal_quantiles():
    lv = NF4.levels()
    assert len(lv) == 16 and lv[0] == -1 and lv[-1] == 1 and lv[7] == 0
    assert lv.tolist()[8] == pytest.approx(0.07958029955625534, abs=1e-7)
    assert lv.tolist()[1] == pytest.approx(-0.6961928009986877, abs=1e-7)
    # recompute as in QLoRA / bitsandbytes create_normal_map(offset=0.9677083)
    n = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    off = 0.9677083
    pos = n.icdf(torch.linspace(off, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -n.icdf(torch.linspace(off, 0.5, 8, dtype=torch.float64)[:-1])
    v = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    v = v / v.abs().max()
    assert torch.allclose(v, torch.tensor(NF4_LEVELS, dtype=torch.float64), atol=1e-6)
    r = NF4.round(torch.tensor([0.9, 0.05, -0.65, 2.0]))
    assert r.tolist() == pytest.approx([1.0, 0.07958029955625534, -0.6961928009986877, 1.0])


# ------------------------------------------------------------------ integers


def test_int8_symmetric_roundtrip_error():
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(2)) * 3
    q = Quantizer("int8", "per_token")
    xh = q.fake_quant(x)
    scale = x.abs().amax(dim=-1, keepdim=True) / 127
    assert ((x - xh).abs() <= scale / 2 + 1e-6).all()
    # the absmax of each row is reproduced (restricted symmetric grid, ±127)
    i = x.abs().argmax(dim=-1)
    assert torch.allclose(xh.gather(1, i[:, None]), x.gather(1, i[:, None]), rtol=1e-6)
    assert IntFormat(8).qmin == -127 and IntFormat(8).qmax == 127
    assert torch.round(torch.tensor([0.5, 1.5, 2.5])).tolist() == IntFormat(8).round(torch.tensor([0.5, 1.5, 2.5])).tolist()


def test_int_asymmetric_zero_point_min_max():
    x = torch.rand(8, 128, generator=torch.Generator().manual_seed(3)) * 5 + 1  # all positive
    q = Quantizer("uint4", "per_token")
    xh = q.fake_quant(x)
    assert torch.equal(xh.amin(-1), x.amin(-1))  # min exactly
    assert torch.allclose(xh.amax(-1), x.amax(-1), rtol=1e-6, atol=0)
    scale = (x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)) / 15
    assert ((x - xh).abs() <= scale / 2 + 1e-5).all()
    # asymmetric beats symmetric on one-sided data at the same bits
    sym = Quantizer("int4", "per_token").fake_quant(x)
    assert (x - xh).square().sum() < (x - sym).square().sum()
    assert q.effective_bits((8, 128)) == 4 + 32 / 128


# ------------------------------------------------------------------ granularity / static


def test_granularities_shapes_and_dtype():
    x = torch.randn(2, 3, 256, dtype=torch.bfloat16)
    for spec in ("int8:per_tensor", "int8:per_token", "fp8_e4m3:per_channel", "int4:per_group:64", "nf4:per_group:64"):
        y = Quantizer.parse(spec).fake_quant(x)
        assert y.shape == x.shape and y.dtype == x.dtype
    assert Granularity("per_group", 64).grouped(x.float()).shape == (6, 4, 64)
    assert Granularity("per_token").grouped(x.float()).shape == (6, 1, 256)
    assert Granularity("per_channel").grouped(x.float()).shape == (2, 1, 768)
    with pytest.raises(ActlabError, match="not divisible"):
        Quantizer.parse("int4:per_group:100").fake_quant(x)


def test_per_group_uses_group_absmax():
    x = torch.full((1, 8), 1.2)
    x[0, 4:] = 100.0
    x[0, 0] = 2.0
    y = Quantizer("int4", "per_group:4").fake_quant(x)
    # first group's scale 2/7 keeps the small values; per-tensor would flatten them
    assert torch.allclose(y[0, :4], torch.tensor([2.0, 1.1428571, 1.1428571, 1.1428571]), atol=1e-5)
    assert torch.allclose(y[0, 4:], x[0, 4:])
    yt = Quantizer("int4", "per_tensor").fake_quant(x)
    assert (yt[0, 1:4] == 0).all()


def test_static_vs_dynamic():
    q = Quantizer.parse("int8:per_tensor:static")
    assert not q.dynamic
    with pytest.raises(ActlabError, match="not calibrated"):
        q.fake_quant(torch.ones(3))
    q.calibrate(torch.tensor([1.0, -2.0])).calibrate(torch.tensor([4.0]))  # running absmax = 4
    x = torch.tensor([0.5, 8.0, -1.0])
    y = q.fake_quant(x)
    s = 4 / 127
    assert torch.allclose(y, torch.tensor([round(0.5 / s) * s, 4.0, round(-1 / s) * s]))
    d = Quantizer("int8", "per_tensor").fake_quant(x)
    assert d[1] == 8.0 and not torch.equal(y, d)
    # static per_group: one scale per channel group shared over tokens
    qg = Quantizer("int8", "per_group:2", dynamic=False)
    qg.calibrate(torch.tensor([[1.0, 0.0, 10.0, 0.0], [0.0, 2.0, 0.0, 0.0]]))
    assert qg._hi.flatten().tolist() == [2.0, 10.0]
    assert qg.fake_quant(torch.randn(7, 4)).shape == (7, 4)
    with pytest.raises(ActlabError, match="per_token"):
        Quantizer.parse("int8:per_token:static")
    with pytest.raises(ActlabError, match="dynamic"):
        Quantizer("int8").calibrate(torch.ones(2))


def test_clip_ratio_and_mse_on_heavy_tails():
    t = torch.distributions.StudentT(torch.tensor(2.0))
    torch.manual_seed(4)
    x = t.sample((32, 512))
    for fmt in ("int4", "int3", "fp4_e2m1"):
        base = Quantizer(fmt, "per_token").fake_quant(x)
        mse = Quantizer(fmt, "per_token", clip="mse").fake_quant(x)
        e_base = (x - base).square().sum(-1)
        e_mse = (x - mse).square().sum(-1)
        assert (e_mse <= e_base + 1e-6).all(), fmt  # per group, never worse
        assert e_mse.sum() < e_base.sum(), fmt
    y = Quantizer("int8", "per_tensor", clip=0.5).fake_quant(torch.tensor([-4.0, 1.0, 4.0]))
    assert y.tolist() == [-2.0, pytest.approx(1.0, abs=2 / 127 / 2), 2.0]
    # static + mse also never worse than static without clipping on the calibration data
    qs = Quantizer("int4", "per_tensor", dynamic=False, clip="mse").calibrate(x)
    q0 = Quantizer("int4", "per_tensor", dynamic=False).calibrate(x)
    assert (x - qs(x)).square().sum() <= (x - q0(x)).square().sum()


def test_effective_bits():
    assert Quantizer.parse("int4:per_group:128").effective_bits((4096, 4096)) == 4 + 16 / 128
    assert Quantizer.parse("nf4:per_group:64").effective_bits((10, 128)) == 4 + 16 / 64
    assert Quantizer.parse("int8:per_token").effective_bits((5, 100)) == 8 + 16 / 100
    assert Quantizer.parse("fp8_e4m3:per_tensor").effective_bits((10, 10)) == 8 + 16 / 100
    assert Quantizer.parse("int8:per_channel:scale_bits=32").effective_bits((4, 8)) == 8 + 32 / 8
    assert Quantizer("int4", "per_group:32", dynamic=False).effective_bits((1000, 64)) == pytest.approx(4 + 2 * 16 / 64000)


# ------------------------------------------------------------------ parsing


def test_parse_quantizer_specs():
    q = Quantizer.parse("int4:per_group:128:clip=mse")
    assert isinstance(q.format, IntFormat) and q.format.bits == 4 and q.clip == "mse"
    assert q.granularity == Granularity("per_group", 128)
    q = Quantizer.parse("fp8_e4m3:per_tensor:static")
    assert q.format.name == "fp8_e4m3" and not q.dynamic
    assert str(Quantizer.parse("nf4:per_group:64")) == "nf4:per_group:64"
    assert Quantizer.parse("int8:per_token:clip=0.9").clip == 0.9
    assert str(Quantizer.parse(str(q))) == str(q)
    assert parse_format("uint8") == IntFormat(8, symmetric=False)
    assert parse_format("e3m4") == FPFormat(3, 4)


@pytest.mark.parametrize(
    "spec,match",
    [
        ("int9x:per_token", "unknown format 'int9x'"),
        ("fp8_e4m2:per_tensor", "unknown format"),
        ("nf5", "did you mean: nf4"),
        ("int8:per_tokn", "unknown part 'per_tokn'.*per_token"),
        ("int4:per_group", "group size"),
        ("int4:per_group:abc", "group size"),
        ("int8:per_tensor:clip=2", "clip ratio"),
        ("int8:per_tensor:clip=foo", "clip must be"),
        ("int8:per_tensor:clp=mse", "unknown option 'clp'.*clip"),
        ("int1", "2..16 bits"),
        ("", "empty"),
    ],
)
def test_parse_errors(spec, match):
    with pytest.raises(ActlabError, match=match):
        Quantizer.parse(spec)


def test_parse_format_did_you_mean():
    with pytest.raises(ActlabError, match="did you mean: fp8_e4m3"):
        parse_format("fp8_e4m")
