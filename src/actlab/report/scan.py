"""`scan`: perplexity plus, per block, the residual-stream norm and the top outlier channels.

One pass: the perplexity windows run inside a recording of every `resid_post`, so the
massive activations (Sun et al., "Massive Activations in Large Language Models", arXiv
2402.17762) are measured on the same tokens as the perplexity.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
from rich.console import Group
from rich.table import Table

import actlab as al


@dataclass
class LayerStats:
    site: str
    norm_mean: float
    norm_max: float
    absmax: float
    median_channel_absmax: float
    top_channels: list[tuple[int, float]]  # (channel, absmax), largest first

    @property
    def outlier_ratio(self) -> float:
        return self.absmax / max(self.median_channel_absmax, 1e-12)


@dataclass
class ScanResult:
    model: str
    fingerprint: dict
    n_sites: int
    site_components: list[str]
    perplexity: dict
    tokens: int
    layers: list[LayerStats] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        for layer, stats in zip(out["layers"], self.layers):
            layer["outlier_ratio"] = stats.outlier_ratio
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __rich__(self) -> Group:
        head = Table(title=f"actlab scan: {self.model}", show_header=False)
        ppl = self.perplexity
        head.add_row("sites", f"{self.n_sites} ({', '.join(self.site_components)})")
        head.add_row("perplexity", f"{ppl['ppl']:.3f} on {ppl['tokens_scored']} tokens of "
                                   f"{ppl['protocol']['corpus']}:{ppl['protocol']['split']}")
        head.add_row("weights", self.fingerprint["weights_sha256"])
        layers = Table(title=f"residual stream (resid_post) over {self.tokens} tokens")
        for col in ("block", "‖x‖", "max ‖x‖", "absmax", "median", "ratio", "top channels"):
            layers.add_column(col, justify="left" if col == "top channels" else "right", no_wrap=True)
        for i, s in enumerate(self.layers):
            top = " ".join(f"{c}:{_short(v)}" for c, v in s.top_channels[:3])
            layers.add_row(str(i), _short(s.norm_mean), _short(s.norm_max), _short(s.absmax),
                           _short(s.median_channel_absmax), f"{s.outlier_ratio:.0f}×", top)
        layers.caption = ("‖x‖: mean token norm; median: median over channels of the channel absmax; "
                          "ratio: absmax / median")
        return Group(head, layers)


def _short(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v / 1000:.1f}k"
    return f"{v:.0f}" if abs(v) >= 10 else f"{v:.1f}"


def layer_stats(site: str, x: torch.Tensor, top: int) -> LayerStats:
    """Norm and channel statistics of `[tokens, d_model]` activations."""
    x = x.float()
    norms = x.norm(dim=-1)
    channel_absmax = x.abs().amax(dim=0)
    values, channels = channel_absmax.topk(top)
    return LayerStats(site, norms.mean().item(), norms.max().item(), channel_absmax.max().item(),
                      channel_absmax.median().item(), [(int(c), float(v)) for c, v in zip(channels, values)])


def scan(lab: "al.Lab", corpus: str = "austen:test", tokens: int = 4096, seq_len: int = 512, top: int = 5,
         progress: bool = True) -> ScanResult:
    """Scan a model: its sites, its perplexity on `corpus`, and per block the residual outliers."""
    sites = lab.sites("blocks.*.resid_post")
    with lab.record(sites, dtype=torch.float32) as rec:
        ppl = al.eval.perplexity(lab, corpus, seq_len=seq_len, max_tokens=tokens, progress=progress)
    components = sorted({name.split(".", 2)[2] for name in lab.sites("blocks.0.*")})
    return ScanResult(
        model=lab.name, fingerprint=lab.fingerprint.to_dict(), n_sites=len(lab.sites()),
        site_components=components, perplexity=ppl.to_dict(), tokens=ppl.tokens_scored + ppl.protocol["n_windows"],
        layers=[layer_stats(s, rec[s], top) for s in sites],
    )
