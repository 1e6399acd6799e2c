"""The hook engine behind `lab.record` and `lab.edit`.

One dispatcher hook per (module, input/output) serves every site living there: it applies the
active edits in the order they were entered, then hands the (edited) value to the active
recordings. A pre-hook on the decoder stack builds the `ForwardState` of each call (mask, cache
length, decoding step). Hooks are re-installed from scratch whenever a context opens or
closes, so nothing is left behind, also after an exception.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from actlab.engine.attention import HANDLER_ATTR, IMPLEMENTATION, explicit_attention
from actlab.engine.context import EditContext, ForwardState
from actlab.engine.recording import Recording
from actlab.errors import ActlabError
from actlab.sites import Site, SiteCatalog
from transformers.integrations.sdpa_attention import sdpa_attention_forward


class StopForward(Exception):
    """Raised after the deepest hooked site when the caller does not need the logits."""


class Engine:
    def __init__(self, model: torch.nn.Module, catalog: SiteCatalog):
        self.model = model
        self.catalog = catalog
        self.edits: list[tuple[Site, object]] = []
        self.recordings: list[Recording] = []
        self.state: ForwardState | None = None
        self.stop_early = False
        self._handles: list = []
        self._attention_modules: list[torch.nn.Module] = []
        self._step = 0

    # -- activation ------------------------------------------------------------------------------
    def add_edits(self, pairs: list[tuple[Site, object]]) -> None:
        self.edits.extend(pairs)
        self._rebuild_or_undo(lambda: self.remove_edits(pairs))

    def remove_edits(self, pairs: list[tuple[Site, object]]) -> None:
        ids = {id(p) for p in pairs}
        self.edits = [p for p in self.edits if id(p) not in ids]
        self.rebuild()

    def add_recording(self, rec: Recording) -> None:
        self.recordings.append(rec)
        self._rebuild_or_undo(lambda: self.remove_recording(rec))

    def remove_recording(self, rec: Recording) -> None:
        self.recordings = [r for r in self.recordings if r is not rec]
        self.rebuild()

    def _rebuild_or_undo(self, undo) -> None:
        try:
            self.rebuild()
        except BaseException:
            undo()  # leaves the hooks of the contexts still open, and nothing of this one
            raise

    @property
    def active(self) -> bool:
        return bool(self.edits or self.recordings)

    def rebuild(self) -> None:
        """Remove every hook, then install what the active edits and recordings need."""
        for handle in self._handles:
            handle.remove()
        for module in self._attention_modules:
            setattr(module, HANDLER_ATTR, None)
        self._handles, self._attention_modules = [], []
        if not self.active:
            self.state = None
            return
        self._edits_at: dict[str, list] = defaultdict(list)
        self._recs_at: dict[str, list[Recording]] = defaultdict(list)
        sites: dict[str, Site] = {}
        for site, edit in self.edits:
            self._edits_at[site.name].append(edit)
            sites[site.name] = site
        for rec in self.recordings:
            for site in rec.sites.values():
                self._recs_at[site.name].append(rec)
                sites[site.name] = site
        groups: dict[tuple[str, str], list[Site]] = defaultdict(list)
        for site in sites.values():
            groups[(site.module, site.hook)].append(site)
        base = self.model.get_submodule(self.catalog.adapter.layers.rsplit(".", 1)[0])  # the decoder stack
        self._handles.append(base.register_forward_pre_hook(self._begin_call, with_kwargs=True))
        for (path, kind), group in groups.items():
            self._install(self.model.get_submodule(path), kind, group)
        self._install_stop(max(sites.values(), key=lambda s: s.order))

    def _install(self, module: torch.nn.Module, kind: str, sites: list[Site]) -> None:
        if kind == "output":
            self._handles.append(module.register_forward_hook(self._output_hook(sites)))
        elif kind == "input":
            self._handles.append(module.register_forward_pre_hook(self._input_hook(sites), with_kwargs=True))
        elif kind == "attention":
            if self.model.config._attn_implementation != IMPLEMENTATION:
                raise ActlabError(f"{sites[0].name} lives inside the actlab attention function, but the model now "
                                  f"uses {self.model.config._attn_implementation!r}: call "
                                  f"lab.model.set_attn_implementation({IMPLEMENTATION!r})")
            setattr(module, HANDLER_ATTR, self._attention_handler(sites))
            self._attention_modules.append(module)
        elif kind == "resid_mid":
            for site in sites:
                block = self.model.get_submodule(f"{self.catalog.adapter.layers}.{site.layer}")
                self._handles.append(block.register_forward_pre_hook(self._stash_resid_pre(site), with_kwargs=True))
                self._handles.append(module.register_forward_hook(self._resid_mid_hook(site)))

    def _install_stop(self, deepest: Site) -> None:
        if deepest.layer is None and deepest.name != "embed":
            return  # final_norm / logits: nothing to skip
        path = self.catalog.adapter.embed if deepest.layer is None else f"{self.catalog.adapter.layers}.{deepest.layer}"

        def stop(module, args, output):
            if self.stop_early:
                raise StopForward

        self._handles.append(self.model.get_submodule(path).register_forward_hook(stop))

    # -- per call ----------------------------------------------------------------------------------
    def _begin_call(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        ref = ids if ids is not None else kwargs["inputs_embeds"]
        batch, q_len = ref.shape[:2]
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2:  # covers cached and new tokens: the rest is the past
            past = mask.shape[1] - q_len
        else:  # the cache argument is `past_key_values` (transformers <= 5.23) or `cache` (5.24)
            cache = kwargs.get("past_key_values", kwargs.get("cache"))
            past = int(cache.get_seq_length()) if hasattr(cache, "get_seq_length") else 0
            mask = torch.ones(batch, past + q_len, dtype=torch.bool, device=ref.device)
        self._step = 0 if past == 0 else self._step + 1
        self.state = ForwardState(mask.bool(), q_len, past, self._step)
        for rec in self.recordings:
            rec.begin_call(self.state)

    def _process(self, site: Site, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Apply the edits of `site` to x ([batch, q, *shape]) and record it; (x, edited?)."""
        edits = self._edits_at.get(site.name)
        if edits:
            ctx = EditContext(site.name, site.layer, self.state)
            for edit in edits:
                x = edit(x, ctx)
        for rec in self._recs_at.get(site.name, ()):
            rec.capture(site, x, self.state)
        return x, bool(edits)

    def _process_raw(self, sites: list[Site], raw: torch.Tensor) -> torch.Tensor:
        for site in sites:
            x, edited = self._process(site, self._view(site, raw))
            if edited:
                raw = self._insert(site, raw, x)
        return raw

    def _view(self, site: Site, raw: torch.Tensor) -> torch.Tensor:
        """The site's `[batch, q, *shape]` view of a module's raw input or output."""
        lead = (self.state.batch_size, self.state.q_len)
        if raw.dim() == 2:  # OPT flattens tokens to [batch * q, features] around its MLP
            raw = raw.view(*lead, raw.shape[-1])
        if site.part is None:
            return raw.view(*lead, *site.shape) if len(site.shape) == 2 else raw
        c = self.catalog
        if c.adapter.qkv_layout == "per_head":
            return raw.view(*lead, c.n_heads, 3, c.head_dim)[:, :, :, "qkv".index(site.part)]
        q_width, kv_width = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        start = {"q": 0, "k": q_width, "v": q_width + kv_width}[site.part]
        width = q_width if site.part == "q" else kv_width
        return raw[..., start:start + width].view(*lead, *site.shape)

    def _insert(self, site: Site, raw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if site.part is None:
            return x.reshape(raw.shape)
        out = raw.clone()
        self._view(site, out).copy_(x)
        return out

    # -- hook factories ----------------------------------------------------------------------------
    def _output_hook(self, sites: list[Site]):
        def hook(module, args, output):
            raw = output[0] if isinstance(output, tuple) else output
            new = self._process_raw(sites, raw)
            if new is raw:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    def _input_hook(self, sites: list[Site]):
        def hook(module, args, kwargs):
            positional = bool(args)
            raw = args[0] if positional else kwargs["hidden_states"]
            new = self._process_raw(sites, raw)
            if new is raw:
                return None
            if positional:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        return hook

    def _stash_resid_pre(self, site: Site):
        def hook(module, args, kwargs):
            self.state.scratch[("resid_pre", site.layer)] = args[0] if args else kwargs["hidden_states"]

        return hook

    def _resid_mid_hook(self, site: Site):
        """resid_mid = resid_pre + attention branch; an edit becomes a delta on the branch."""

        def hook(module, args, output):
            branch = output[0] if isinstance(output, tuple) else output
            mid = self.state.scratch[("resid_pre", site.layer)] + branch
            x, edited = self._process(site, mid)
            if not edited:
                return None
            new = branch + (x - mid)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    def _attention_handler(self, sites: list[Site]):
        by_component = {s.component: s for s in sites}

        def handler(module, query, key, value, attention_mask, **kwargs):
            q_len = query.shape[2]
            if "attn.q_rot" in by_component:
                x, edited = self._process(by_component["attn.q_rot"], query.transpose(1, 2))
                if edited:
                    query = x.transpose(1, 2)
            if "attn.k_rot" in by_component:
                new_keys = key[:, :, -q_len:]
                x, edited = self._process(by_component["attn.k_rot"], new_keys.transpose(1, 2))
                if edited:  # in place, so that a KV cache holding `key` keeps the edited keys
                    new_keys.copy_(x.transpose(1, 2))
            site = by_component.get("attn.pattern")
            if site is None:
                return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
            scaling = kwargs.get("scaling") or getattr(module, "scaling", query.shape[-1] ** -0.5)
            edit_pattern = lambda probs: self._pattern(site, probs)  # noqa: E731
            out, _ = explicit_attention(query, key, value, attention_mask, scaling, kwargs.get("softcap"), edit_pattern)
            return out, None

        return handler

    def _pattern(self, site: Site, probs: torch.Tensor) -> torch.Tensor:
        """Edit the pattern on its key columns; record it indexed by real key position."""
        x = probs.transpose(1, 2)  # [batch, q, heads, keys]
        edits = self._edits_at.get(site.name)
        if edits:
            ctx = EditContext(site.name, site.layer, self.state)
            for edit in edits:
                x = edit(x, ctx)
        recs = self._recs_at.get(site.name, ())
        if recs:
            by_position = self._keys_by_position(x)
            for rec in recs:
                rec.capture(site, by_position, self.state)
        return x.transpose(1, 2)

    def _keys_by_position(self, x: torch.Tensor) -> torch.Tensor:
        """Re-index the key axis from cache columns to real-token positions (padding dropped)."""
        k_len = x.shape[-1]
        mask = self.state.attention_mask.long()
        positions = (mask.cumsum(-1) - 1)[:, -k_len:]
        real = mask[:, -k_len:].bool()
        width = int(positions.max()) + 1
        index = torch.where(real, positions, width)[:, None, None, :].expand(*x.shape[:3], k_len)
        out = x.new_zeros(*x.shape[:3], width + 1)
        out.scatter_(-1, index, x * real[:, None, None, :])
        return out[..., :width]
