"""FlatQuant (Sun et al., "FlatQuant: Flatness Matters for LLM Quantization", arXiv 2410.09426):
learn, per linear group, an invertible affine transform that makes weights and activations flat
before quantization, with learnable clipping of both.

Per group (the linears reading one input tensor: q/k/v, o, gate/up, down) with input width
d = n1·n2 (n1 the largest divisor of d not above √d) the transform is

    x → x · diag(1/c) · (P1 ⊗ P2)        W → W · diag(c) · (P1 ⊗ P2)^-T

so `x W^T` is unchanged in float. `c` is the paper's per-channel scaling merged into the
transform, initialised at 1 (the paper's code calls this `diag_init=one_style`; its default
SmoothQuant-style start, `c = max|X|^0.3 / max|W|^0.7`, measured on the sampled rows, made
SmolLM2's attn.z and mlp.act groups collapse at W4A4 here); P1, P2 start at the identity or at
randomized Hadamard matrices (`init=hadamard`). With `clip=true` every weight row gets a clip
ratio `sigmoid(θ_r)` and the group's input one per-tensor ratio `sigmoid(θ_a)` (applied to each
token's absmax, per-token dynamic quantization), both starting at sigmoid(4) ≈ 0.98.

Objective (a simplification of the paper): the paper trains all transforms of a decoder block
together on the MSE of the block output; here each group is trained alone on the relative MSE of
its own outputs, `‖Q_a(x̃) Q_w(W̃)^T − x W^T‖² / ‖x W^T‖²`, over `rows` sampled calibration
rows, with fake int quantization (symmetric, weights per output channel, inputs per token) and a
straight-through estimator for the rounding. A block-wise objective needs a forward and backward
of the whole block (attention included) over all calibration tokens per step; the per-group one
costs 0.02 to 0.1 s per step on SmolLM2's groups (one CPU thread), about 8 minutes for the model
at the default 50 steps on a shared thread. Training is in float32 with AdamW and a cosine learning rate (`lr`
for c, P1, P2; 10 × `lr` for the clip logits, our choice, so that they can move in 50 steps).

Nothing is folded into the model's other layers: the merged matrix runs online as the
`QuantLinear`'s "matmul" op (merged with a previous rotation's), the weights absorb its inverse
transpose (`LinearGroup.transform`). Learned clip ratios are stored on the `QuantLinear`s
(`weight_clip`, `input_clip`) and honoured by the quantization stage that follows: weight rows
are clamped to ratio × row absmax before quantization (for the per-channel absmax quantizer that
is the same as clipping its range), the input quantizer gets the ratio as its `clip` unless the
recipe gives one. `w` and `a` should match the quantization stage (`flatquant(w=4,a=4) | w4a4`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from actlab.compress.formats import IntFormat
from actlab.compress.rotations import rotation
from actlab.compress.transforms import select_groups
from actlab.errors import ActlabError
from actlab.eval.common import progress_bar

INITS = ("identity", "hadamard")
_CLIP_LOGIT = 4.0  # sigmoid(4) ≈ 0.982


def kron_factors(d: int) -> tuple[int, int]:
    """(n1, n2) with n1 · n2 = d, n1 the largest divisor of d not above √d."""
    n1 = next(k for k in range(math.isqrt(d), 0, -1) if d % k == 0)
    return n1, d // n1


def _ste_quant(x: torch.Tensor, qmax: int, ratio: torch.Tensor) -> torch.Tensor:
    """Symmetric absmax fake quantization per row (range × ratio), straight-through rounding."""
    scale = (x.abs().amax(-1, keepdim=True) * ratio).clamp_min(1e-8) / qmax
    y = x / scale
    y = y + (torch.round(y) - y).detach()
    return y.clamp(-qmax, qmax) * scale


def _start(n: int, init: str, seed: int, d: int) -> torch.Tensor:
    """A Kronecker factor's starting matrix: the identity or a randomized Hadamard matrix."""
    if init == "identity":
        return torch.eye(n)
    try:
        return rotation(n, "hadamard", seed).float()
    except ActlabError:
        raise ActlabError(f"flatquant(init=hadamard): no Hadamard matrix of order {n} (a Kronecker factor of "
                          f"width {d} = {d // n} x {n}); use init=identity") from None


@dataclass
class FlatFit:
    """What `fit_group` learned for one group: the online matrix, clip ratios, objective before/after."""

    matrix: torch.Tensor  # diag(1/c) (P1 ⊗ P2), float64
    weight_clip: torch.Tensor | None  # per concatenated weight row
    input_clip: float | None
    loss_start: float
    loss_end: float


class _Params(torch.nn.Module):
    def __init__(self, weight: torch.Tensor, init: str, clip: bool, seed: int) -> None:
        super().__init__()
        d = weight.shape[1]
        self.n1, self.n2 = kron_factors(d)
        self.log_c = torch.nn.Parameter(torch.zeros(d))
        self.p1 = torch.nn.Parameter(_start(self.n1, init, seed, d))
        self.p2 = torch.nn.Parameter(_start(self.n2, init, seed + 1, d))
        self.w_logit = torch.nn.Parameter(torch.full((weight.shape[0], 1), _CLIP_LOGIT)) if clip else None
        self.a_logit = torch.nn.Parameter(torch.tensor(_CLIP_LOGIT)) if clip else None

    def transformed(self, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x diag(1/c) (P1 ⊗ P2) and W diag(c) (P1 ⊗ P2)^-T, through the Kronecker factors."""
        c = self.log_c.exp()
        xr = (x / c).reshape(-1, self.n1, self.n2)
        wr = (weight * c).reshape(-1, self.n1, self.n2)
        xt = self.p1.T @ xr @ self.p2
        wt = torch.linalg.inv(self.p1) @ wr @ torch.linalg.inv(self.p2).T
        return xt.reshape(x.shape), wt.reshape(weight.shape)

    def ratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        one = torch.ones(())
        if self.w_logit is None:
            return one, one
        return torch.sigmoid(self.w_logit), torch.sigmoid(self.a_logit)

    def matrix(self) -> torch.Tensor:
        p = torch.kron(self.p1.detach().double(), self.p2.detach().double())
        return p / self.log_c.detach().double().exp()[:, None]


def fit_group(x: torch.Tensor, weight: torch.Tensor, w_bits: int = 4, a_bits: int = 4, steps: int = 50,
              lr: float = 5e-3, clip: bool = True, init: str = "identity", seed: int = 0) -> FlatFit:
    """Learn FlatQuant's transform and clip ratios for inputs `x` [n, d] and the concatenated
    weights [out, d] of the linears reading them; see the module docstring."""
    x, weight = x.detach().float(), weight.detach().float()
    ref = x @ weight.T
    norm = ref.square().mean().clamp_min(1e-12)
    params = _Params(weight, init, clip, seed)
    wq, aq = IntFormat(w_bits).qmax, IntFormat(a_bits).qmax

    def loss() -> torch.Tensor:
        xt, wt = params.transformed(x, weight)
        rw, ra = params.ratios()
        return (_ste_quant(xt, aq, ra) @ _ste_quant(wt, wq, rw).T - ref).square().mean() / norm

    clips = [p for p in (params.w_logit, params.a_logit) if p is not None]
    opt = torch.optim.AdamW([{"params": [params.log_c, params.p1, params.p2], "lr": lr},
                             {"params": clips, "lr": 10 * lr}], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    with torch.no_grad():
        start = float(loss())
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        end = float(loss())
    rw, ra = params.ratios()
    return FlatFit(params.matrix(), rw.detach().flatten() if clip else None, float(ra.detach()) if clip else None, start, end)


@dataclass
class FlatQuant:
    """The `flatquant(...)` recipe stage; see the module docstring. `rows`: calibration rows
    sampled per group for training."""

    w: int = 4
    a: int = 4
    steps: int = 50
    lr: float = 5e-3
    clip: bool = True
    init: str = "identity"
    sites: str = "all"
    rows: int = 256

    def __post_init__(self) -> None:
        for side in ("w", "a"):
            bits = getattr(self, side)
            if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
                raise ActlabError(f"flatquant: {side} must be an integer number of bits in 2..8, got {bits!r}")
        for name, low in (("steps", 0), ("rows", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ActlabError(f"flatquant: {name} must be an integer >= {low}, got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ActlabError(f"flatquant: lr must be a positive number, got {self.lr!r}")
        if not isinstance(self.clip, bool):
            raise ActlabError(f"flatquant: clip must be true or false, got {self.clip!r}")
        if self.init not in INITS:
            raise ActlabError(f"flatquant: init must be identity or hadamard, got {self.init!r}")
        select_groups([], self.sites)  # validates the site names

    def apply(self, state) -> None:
        groups = select_groups(state.groups, self.sites)
        stats = state.stats(groups, "flatquant statistics", sample_rows=self.rows)
        with progress_bar(len(groups), "flatquant", state.progress) as advance:
            for i, g in enumerate(groups):
                weight = torch.cat([q.weight.detach() for q in g.linears])
                fit = fit_group(stats[g.name].sample(), weight, self.w, self.a, self.steps, self.lr, self.clip,
                                self.init, seed=i)
                g.transform(fit.matrix)
                start = 0
                for q in g.linears:
                    if fit.weight_clip is not None:
                        q.weight_clip = fit.weight_clip[start:start + q.out_features].clone()
                    q.input_clip = fit.input_clip
                    start += q.out_features
                advance(1)
