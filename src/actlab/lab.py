"""`Lab`: a HF causal LM with its tokenizer, adapter, site catalog, fingerprint and hook engine.

The Lab wraps the model without converting or copying weights, so results match plain HF;
`lab.model` and `lab.tokenizer` are the plain HF objects.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from actlab.arch import adapter_for
from actlab.engine import attention
from actlab.engine.context import Positions
from actlab.engine.engine import Engine, StopForward
from actlab.engine.recording import Recording
from actlab.errors import ActlabError
from actlab.models.fingerprint import Fingerprint, hash_files, hash_state_dict
from actlab.models.loading import cache_kwarg, load_model, parse_dtype
from actlab.sites import Site, SiteCatalog

Prompts = str | Sequence[str] | Sequence[Sequence[int]] | torch.Tensor
EditSpec = Mapping[str, object] | Sequence[tuple[str, object]]


class Lab:
    """Model + tokenizer + adapter + fingerprint; records and edits activations at named sites."""

    def __init__(self, model, tokenizer, name: str, source: Path | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        self.adapter = adapter_for(model)
        self.catalog = SiteCatalog(model, self.adapter)
        model.set_attn_implementation(attention.register())
        self.engine = Engine(model, self.catalog)
        self._fingerprint: Fingerprint | None = None
        self.reference: dict | None = None  # how to load this model again (set by `load`), e.g. in a Ray actor

    @classmethod
    def from_model(cls, model, tokenizer=None, name: str | None = None) -> "Lab":
        """Wrap an already loaded HF model (and tokenizer)."""
        return cls(model, tokenizer, name or model.config.model_type)

    # -- identity ------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> Fingerprint:
        """Name, model type and a hash of the weights (of the files for folder loads)."""
        if self._fingerprint is None:
            sha = hash_files(self.source) if self.source is not None and any(self.source.glob("*.safetensors")) \
                else hash_state_dict(self.model)
            self._fingerprint = Fingerprint(self.name, self.model.config.model_type, sha)
        return self._fingerprint

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def n_layers(self) -> int:
        return self.catalog.n_layers

    @property
    def d_model(self) -> int:
        return self.catalog.d_model

    def __repr__(self) -> str:
        return (f"Lab({self.name!r}, {self.model.config.model_type}, {self.n_layers} blocks, "
                f"d_model {self.d_model}, {str(self.dtype).removeprefix('torch.')})")

    # -- sites -----------------------------------------------------------------------------------
    def sites(self, pattern: str | Sequence[str] = "*") -> list[str]:
        """Canonical site names matching a glob, range or list (all sites by default)."""
        return [s.name for s in self.catalog.resolve(pattern)]

    def site(self, name: str) -> Site:
        return self.catalog[name]

    # -- record / edit -----------------------------------------------------------------------------
    @contextmanager
    def record(self, sites: str | Sequence[str], positions: Positions = "all",
               dtype: str | torch.dtype | None = None, device: str = "cpu") -> Iterator[Recording]:
        """Record the activations at `sites` during every model call inside the block."""
        rec = Recording(self.catalog.resolve(sites), positions, None if dtype is None else parse_dtype(dtype), device)
        self.engine.add_recording(rec)
        try:
            yield rec
        finally:
            self.engine.remove_recording(rec)

    @contextmanager
    def edit(self, edits: EditSpec | object) -> Iterator[None]:
        """Apply edits (`{site or pattern: edit or [edits]}`) to every model call inside the block."""
        pairs = self._edit_pairs(edits)
        self.engine.add_edits(pairs)
        try:
            yield
        finally:
            self.engine.remove_edits(pairs)

    def _edit_pairs(self, edits) -> list[tuple[Site, object]]:
        pairs = []
        for pattern, edit in self._edit_items(edits):
            for e in edit if isinstance(edit, (list, tuple)) else [edit]:
                if not callable(e):
                    raise ActlabError(f"edit for {pattern!r} is not callable: {e!r}")
                pairs.extend((site, e) for site in self.catalog.resolve(pattern))
        if not pairs:
            raise ActlabError("no edits given")
        return pairs

    def _edit_items(self, edits) -> list[tuple[str, object]]:
        """Flatten `{site: edit}`, `[(site, edit)]`, artifacts with `.edits(lab)` and lists of those."""
        if hasattr(edits, "edits") and callable(edits.edits):  # steering vectors, recipes: checked against this lab
            return self._edit_items(edits.edits(self))
        if isinstance(edits, Mapping):
            return list(edits.items())
        items = []
        for item in edits:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                items.append(item)
            else:
                items.extend(self._edit_items(item))
        return items

    # -- running ---------------------------------------------------------------------------------
    def tokenize(self, prompts: Prompts, padding_side: str = "left") -> dict[str, torch.Tensor]:
        """Token ids, attention mask and mask-following position ids for a batch of prompts."""
        if padding_side not in ("left", "right"):
            raise ActlabError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
        if isinstance(prompts, torch.Tensor):
            rows = [list(map(int, r)) for r in (prompts if prompts.dim() == 2 else prompts[None])]
        else:
            if isinstance(prompts, str):
                prompts = [prompts]
            if len(prompts) == 0:
                raise ActlabError("no prompts given")
            if isinstance(prompts[0], str):
                if self.tokenizer is None:
                    raise ActlabError("this lab has no tokenizer: pass token ids")
                rows = [self.tokenizer(p)["input_ids"] for p in prompts]
            else:
                rows = [list(map(int, r)) for r in prompts]
        if any(len(r) == 0 for r in rows):
            raise ActlabError("a prompt has no tokens")
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            cols = slice(width - len(r), width) if padding_side == "left" else slice(0, len(r))
            ids[i, cols] = torch.tensor(r)
            mask[i, cols] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        device = self.device
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        for candidate in (getattr(tok, "pad_token_id", None), getattr(tok, "eos_token_id", None),
                          self.model.config.pad_token_id if hasattr(self.model.config, "pad_token_id") else None):
            if isinstance(candidate, int):
                return candidate
        return 0

    @torch.inference_mode()
    def forward(self, prompts: Prompts, padding_side: str = "left", return_logits: bool = True):
        """Run the model on a batch. Returns logits `[batch, seq, vocab]` (padding included).

        With `return_logits=False` the forward pass stops after the deepest recorded or edited
        site and returns None: recording early layers then costs only those layers.
        """
        inputs = self.tokenize(prompts, padding_side)
        self.engine.stop_early = not return_logits and self.engine.active
        try:
            return self.model(**inputs, use_cache=False).logits
        except StopForward:
            return None
        finally:
            self.engine.stop_early = False

    @torch.inference_mode()
    def generate(self, prompts: str | Sequence[str], max_new_tokens: int = 20, do_sample: bool = False,
                 skip_special_tokens: bool = True, kv=None, **kwargs) -> str | list[str]:
        """Generate continuations (greedy by default); a string for a string, a list for a list.

        With `kv` (a KV-cache method such as `actlab.compress.KVQuant`), generation runs on its
        packed cache (`kv.cache(self)`); the bytes it held at the end are in `self.last_cache_memory`.
        """
        single = isinstance(prompts, str)
        inputs = self.tokenize([prompts] if single else prompts, "left")
        inputs.pop("position_ids")  # generate derives them from the mask
        cache = kv.cache(self) if kv is not None else None
        try:
            if cache is not None:
                kwargs[cache_kwarg(self.model)] = cache
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                      pad_token_id=self.pad_token_id, **kwargs)
        finally:
            if cache is not None:
                cache.close()
                self.last_cache_memory = cache.memory()
        new = out[:, inputs["input_ids"].shape[1]:]
        if self.tokenizer is None:
            return new[0] if single else new
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=skip_special_tokens)
        return texts[0] if single else texts


def load(model: str, dtype: str | torch.dtype = "float32", device: str = "cpu") -> Lab:
    """Load a Lab: an embedded name (`smollm2-135m`, `gemma3-270m`), HF folder, .gguf file or hub id."""
    hf_model, tokenizer, name, source = load_model(model, dtype, device)
    lab = Lab(hf_model, tokenizer, name, source)
    lab.reference = {"model": model, "dtype": str(parse_dtype(dtype)).removeprefix("torch."), "device": device}
    return lab
