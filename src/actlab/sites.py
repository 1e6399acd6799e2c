"""Canonical site names (`blocks.{i}.{component}`, `embed`, `final_norm`, `logits`) and their resolution.

A `Site` says where an activation exists and how to reach it: the module whose input or output
holds it, which part of a fused projection it is, and its shape per token. Patterns select
many: globs (`blocks.*.attn.k`), inclusive layer ranges (`blocks.8-16.resid_post`) and lists.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

import torch

from actlab.arch.adapter import Adapter
from actlab.errors import ActlabError, did_you_mean

BLOCK_COMPONENTS = (
    "resid_pre", "attn.in", "attn.q", "attn.k", "attn.v", "attn.q_rot", "attn.k_rot", "attn.pattern",
    "attn.z", "attn.out", "resid_mid", "mlp.in", "mlp.act", "mlp.out", "resid_post",
)
ATTENTION_INTERNAL = ("attn.q_rot", "attn.k_rot", "attn.pattern")


@dataclass(frozen=True)
class Site:
    """One place where an activation exists.

    `hook` is "output" or "input" of `module`, "attention" (inside the attention function) or
    "resid_mid" (derived: resid_pre plus the attention branch). `part` names q/k/v of a fused
    projection. `shape` is per token; `None` marks the key axis of an attention pattern.
    """

    name: str
    layer: int | None
    component: str
    module: str
    hook: str
    shape: tuple[int | None, ...]
    part: str | None = None
    order: float = 0.0  # execution order, for early stopping and sorting

    @property
    def heads(self) -> int | None:
        return self.shape[0] if len(self.shape) == 2 else None


def _linear_features(module: torch.nn.Module) -> tuple[int, int]:
    """(in, out) features of nn.Linear or GPT-2's Conv1D."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    weight = module.weight
    return weight.shape[0], weight.shape[1]


class SiteCatalog:
    """All sites of one model, in execution order, with pattern resolution."""

    def __init__(self, model: torch.nn.Module, adapter: Adapter):
        config = model.config
        self.adapter = adapter
        self.n_layers = len(model.get_submodule(adapter.layers))
        self.d_model = model.get_submodule(adapter.embed).weight.shape[1]
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(config, "head_dim", None) or self.d_model // self.n_heads
        self.parallel = adapter.parallel(config)
        first = f"{adapter.layers}.0."
        self.d_mlp = _linear_features(model.get_submodule(first + adapter.down_proj))[0]
        self.vocab = _linear_features(model.get_submodule(adapter.lm_head))[1]
        self._sites: dict[str, Site] = {}
        self._add(Site("embed", None, "embed", adapter.embed, "output", (self.d_model,), order=-1))
        for i in range(self.n_layers):
            for j, component in enumerate(BLOCK_COMPONENTS):
                site = self._block_site(i, component, order=i + j / len(BLOCK_COMPONENTS))
                if site is not None:
                    self._add(site)
        end = self.n_layers
        self._add(Site("final_norm", None, "final_norm", adapter.final_norm, "output", (self.d_model,), order=end))
        self._add(Site("logits", None, "logits", adapter.lm_head, "output", (self.vocab,), order=end + 1))

    def _add(self, site: Site) -> None:
        self._sites[site.name] = site

    def _block_site(self, i: int, component: str, order: float) -> Site | None:
        a = self.adapter
        block = f"{a.layers}.{i}"
        name = f"blocks.{i}.{component}"
        heads_q, heads_kv = (self.n_heads, self.head_dim), (self.n_kv_heads, self.head_dim)
        d = (self.d_model,)
        table: dict[str, tuple[str, str, tuple, str | None]] = {
            "resid_pre": (block, "input", d, None),
            "resid_post": (block, "output", d, None),
            "resid_mid": (f"{block}.{a.attn_branch}", "resid_mid", d, None),
            "attn.in": (f"{block}.{a.attn_norm}", "output", d, None),
            "mlp.in": (f"{block}.{a.mlp_norm}", "output", d, None),
            "attn.q_rot": (f"{block}.{a.attn}", "attention", heads_q, None),
            "attn.k_rot": (f"{block}.{a.attn}", "attention", heads_kv, None),
            "attn.pattern": (f"{block}.{a.attn}", "attention", (self.n_heads, None), None),
            "attn.z": (f"{block}.{a.o_proj}", "input", heads_q, None),
            "attn.out": (f"{block}.{a.o_proj}", "output", d, None),
            "mlp.act": (f"{block}.{a.down_proj}", "input", (self.d_mlp,), None),
            "mlp.out": (f"{block}.{a.mlp}", "output", d, None),
        }
        for part, shape in (("q", heads_q), ("k", heads_kv), ("v", heads_kv)):
            if a.qkv_proj is None:
                table[f"attn.{part}"] = (f"{block}.{getattr(a, part + '_proj')}", "output", shape, None)
            else:
                table[f"attn.{part}"] = (f"{block}.{a.qkv_proj}", "output", shape, part)
        if component == "resid_mid" and self.parallel:
            return None
        module, hook, shape, part = table[component]
        return Site(name, i, component, module, hook, shape, part, order)

    # -- lookup ------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._sites)

    def __getitem__(self, name: str) -> Site:
        return self.resolve(name)[0] if name not in self._sites else self._sites[name]

    def resolve(self, patterns: str | list[str] | tuple[str, ...]) -> list[Site]:
        """Sites matching one or more patterns, in execution order, without duplicates."""
        if isinstance(patterns, str):
            patterns = [p.strip() for p in patterns.split(",") if p.strip()]
        if not patterns:
            raise ActlabError("no site given")
        chosen: dict[str, Site] = {}
        for pattern in patterns:
            for site in self._match(pattern):
                chosen[site.name] = site
        return sorted(chosen.values(), key=lambda s: s.order)

    def _match(self, pattern: str) -> list[Site]:
        expanded = _expand_ranges(pattern)
        hits = [s for p in expanded for n, s in self._sites.items() if fnmatch.fnmatchcase(n, p)]
        if hits:
            return hits
        raise ActlabError(self._explain_miss(pattern))

    def _explain_miss(self, pattern: str) -> str:
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", pattern)
        if m and int(m.group(1)) >= self.n_layers:
            return f"site {pattern!r}: this model has {self.n_layers} blocks (0-{self.n_layers - 1})"
        component = m.group(2) if m else pattern.split(".", 2)[-1]
        if component == "resid_mid" and self.parallel:
            return (f"site {pattern!r} does not exist: this model's blocks are parallel (attention and MLP "
                    "read the same residual), so there is no residual between them")
        return (f"unknown site {pattern!r}{did_you_mean(pattern, self._sites)}; "
                f"components: {', '.join(BLOCK_COMPONENTS)}; global: embed, final_norm, logits")


def _expand_ranges(pattern: str) -> list[str]:
    """`blocks.8-10.x` -> [`blocks.8.x`, `blocks.9.x`, `blocks.10.x`] (inclusive)."""
    m = re.search(r"blocks\.(\d+)-(\d+)\.", pattern)
    if not m:
        return [pattern]
    lo, hi = int(m.group(1)), int(m.group(2))
    if hi < lo:
        raise ActlabError(f"bad layer range {lo}-{hi} in {pattern!r}: the end must not be below the start")
    return [pattern[: m.start()] + f"blocks.{i}." + pattern[m.end():] for i in range(lo, hi + 1)]
