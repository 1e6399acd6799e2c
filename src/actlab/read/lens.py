"""Logit lens: every layer's residual stream decoded through the final norm and the unembedding.

nostalgebraist, "interpreting GPT: the logit lens" (LessWrong, 2020); the readout TransformerLens
gives with `cache.accumulated_resid(apply_ln=True)` followed by `unembed`. Row 0 ("embed") is the
residual entering block 0 (`blocks.0.resid_pre`: token plus position embeddings where the model
adds them), row i + 1 is `blocks.{i}.resid_post`. Each row goes through the model's own final norm
module, its `lm_head` and, where the config has one, its final logit soft-capping, so the last
row equals the model's logits.

```python
lens = al.read.LogitLens(top_k=5).run(lab, "The capital of France is", target=" Paris")
print(lens.table())            # per layer: top tokens with probabilities, rank / probability of " Paris"
lens.heatmap("lens.png")       # layers × positions, coloured by top-1 probability
```
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from actlab.engine.context import Positions
from actlab.errors import ActlabError
from actlab.eval.results import plain_text
from actlab.eval.common import fingerprint, row_chunks
from actlab.progress import progress_bar

Target = str | int | None


def lens_sites(lab: Any) -> list[str]:
    """The residual stream at every depth: `blocks.0.resid_pre`, then each block's `resid_post`."""
    return ["blocks.0.resid_pre", *(f"blocks.{i}.resid_post" for i in range(lab.n_layers))]


def layer_labels(lab: Any) -> list[str]:
    return ["embed", *(str(i) for i in range(lab.n_layers))]


@torch.inference_mode()
def residuals(lab: Any, prompts: Sequence[str], positions: Positions = "last", batch_size: int = 8,
              progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Residual streams `[rows, n_layers + 1, d_model]` of the selected tokens, with each row's
    prompt number and token position (padding never appears: the recording drops it)."""
    if batch_size < 1:
        raise ActlabError(f"batch_size must be at least 1, not {batch_size}")
    sites = lens_sites(lab)
    chunks, prompt_of, position_of = [], [], []
    with progress_bar(len(prompts), "logit lens", progress) as advance:
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start:start + batch_size])
            with lab.record(sites, positions=positions) as rec:
                lab.forward(batch, return_logits=False)
            chunks.append(torch.stack([rec[s] for s in sites], dim=1))
            prompt_of.append(rec.index["prompt"] + start)
            position_of.append(rec.index["position"])
            advance(len(batch))
    return torch.cat(chunks), torch.cat(prompt_of), torch.cat(position_of)


@torch.inference_mode()
def unembed(lab: Any, resid: torch.Tensor) -> torch.Tensor:
    """Logits (float32) of residual rows `[n, d_model]`: final norm, lm_head, final soft-capping."""
    model, adapter = lab.model, lab.adapter
    norm, head = model.get_submodule(adapter.final_norm), model.get_submodule(adapter.lm_head)
    logits = head(norm(resid.to(lab.device, lab.dtype))).float()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def lens_log_probs(lab: Any, resid: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
    """(rows, log-probabilities `[rows, vocab]`) of residual rows `[n, d_model]`, in memory-bounded chunks."""
    for rows in row_chunks(resid.shape[0], lab.catalog.vocab):
        yield rows, unembed(lab, resid[rows]).log_softmax(-1)


def target_token(lab: Any, target: str | int) -> int:
    """A target token id: an int as is, a string by its first token (no special tokens added)."""
    if isinstance(target, int):
        if not 0 <= target < lab.catalog.vocab:
            raise ActlabError(f"target token id {target} is outside the vocabulary (0-{lab.catalog.vocab - 1})")
        return target
    if lab.tokenizer is None:
        raise ActlabError("this lab has no tokenizer: give the target as a token id")
    ids = lab.tokenizer(target, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ActlabError(f"target {target!r} tokenizes to nothing")
    return int(ids[0])


def _token_text(lab: Any, token: int) -> str:
    return lab.tokenizer.decode([token]) if lab.tokenizer is not None else str(token)


@dataclass
class LensResult:
    """The logit lens of some tokens: per row (a prompt's token) and layer, the top-k next tokens
    with their probabilities and, when a target was given, the target's probability and rank
    (0 = the top token). Lists of plain numbers, so `to_dict()` is JSON as is."""

    layers: list[str]
    prompts: list[str]
    prompt_index: list[int]
    positions: list[int]
    tokens: list[str]  # the input token at each row
    top_tokens: list[list[list[str]]]  # [row][layer][k]
    top_ids: list[list[list[int]]]
    top_probs: list[list[list[float]]]
    target: list[str | None] = field(default_factory=list)  # per row
    target_prob: list[list[float]] = field(default_factory=list)  # [row][layer]
    target_rank: list[list[int]] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "logit_lens", **asdict(self)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def _row(self, row: int) -> int:
        if not -len(self.positions) <= row < len(self.positions):
            raise ActlabError(f"row {row} out of range: this lens has {len(self.positions)} rows")
        return row % len(self.positions)

    def table(self, row: int = -1) -> Table:
        """A rich table of one row (default: the last token of the last prompt), one line per layer."""
        r = self._row(row)
        has_target = bool(self.target) and self.target[r] is not None
        title = (f"logit lens: prompt {self.prompt_index[r]}, token {self.positions[r]} {self.tokens[r]!r}"
                 + (f", target {self.target[r]!r}" if has_target else ""))
        table = Table(title=title, title_justify="left")
        table.add_column("layer", justify="right")
        table.add_column("top tokens")
        if has_target:
            table.add_column("target p", justify="right")
            table.add_column("target rank", justify="right")
        for i, layer in enumerate(self.layers):
            tops = "  ".join(f"{t!r} {p:.3f}" for t, p in zip(self.top_tokens[r][i], self.top_probs[r][i]))
            cells = [layer, tops]
            if has_target:
                cells += [f"{self.target_prob[r][i]:.4f}", str(self.target_rank[r][i])]
            table.add_row(*cells)
        return table

    def __rich__(self) -> Table:
        return self.table()

    def __str__(self) -> str:
        return plain_text(self.table(), width=140)

    def heatmap(self, path: str | Path, prompt: int | None = None) -> Path:
        """Layers × tokens image coloured by the top-1 probability (the target's probability when a
        target was given), each cell labelled with its top-1 token; the rows of `prompt` (default: all rows)."""
        from matplotlib.figure import Figure  # no pyplot: the caller's backend and figures stay untouched

        rows = [r for r, p in enumerate(self.prompt_index) if prompt is None or p == prompt]
        if not rows:
            raise ActlabError(f"no rows for prompt {prompt}: prompts are 0-{len(self.prompts) - 1}")
        use_target = bool(self.target) and all(self.target[r] is not None for r in rows)
        values = [[(self.target_prob[r][i] if use_target else self.top_probs[r][i][0]) for r in rows]
                  for i in range(len(self.layers))]
        fig = Figure(figsize=(1.0 + 1.1 * len(rows), 0.8 + 0.32 * len(self.layers)))
        ax = fig.subplots()
        image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, origin="lower")
        for i in range(len(self.layers)):
            for j, r in enumerate(rows):
                text = self.top_tokens[r][i][0].replace("\n", "\\n")[:10]
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if values[i][j] < 0.5 else "black")
        ax.set_yticks(range(len(self.layers)), self.layers)
        ax.set_xticks(range(len(rows)), [repr(self.tokens[r])[1:-1][:12] for r in rows], rotation=45, ha="right")
        ax.set_ylabel("layer")
        ax.set_xlabel("input token")
        label = f"p({self.target[rows[0]]!r})" if use_target else "top-1 probability"
        fig.colorbar(image, ax=ax, label=label)
        ax.set_title(f"logit lens ({self.fingerprint.get('name', '?')})")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=120)
        return path


@dataclass
class LogitLens:
    """Configure (`top_k`, which tokens), then `run(lab, prompts, target=...)` → `LensResult`."""

    top_k: int = 5
    positions: Positions = "last"
    batch_size: int = 8
    progress: bool = True

    def run(self, lab: Any, prompts: str | Sequence[str], target: Target | Sequence[Target] = None) -> LensResult:
        """The lens at the selected tokens of `prompts`. `target` (a string: its first token; or a token
        id) is one for every prompt, or a list with one per prompt (None for no target)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ActlabError("no prompts given")
        if self.top_k < 1:
            raise ActlabError(f"top_k must be at least 1, not {self.top_k}")
        targets = list(target) if isinstance(target, (list, tuple)) else [target] * len(prompts)
        if len(targets) != len(prompts):
            raise ActlabError(f"{len(targets)} targets for {len(prompts)} prompts: give one target or one per prompt")
        target_ids = [None if t is None else target_token(lab, t) for t in targets]
        resid, prompt_of, position_of = residuals(lab, prompts, self.positions, self.batch_size, self.progress)
        n_rows, n_depths = resid.shape[:2]
        k = min(self.top_k, lab.catalog.vocab)
        top_p = torch.empty(n_rows, n_depths, k)
        top_i = torch.empty(n_rows, n_depths, k, dtype=torch.long)
        row_target = torch.tensor([-1 if target_ids[p] is None else target_ids[p] for p in prompt_of.tolist()])
        t_prob, t_rank = torch.zeros(n_rows, n_depths), torch.zeros(n_rows, n_depths, dtype=torch.long)
        flat = resid.flatten(0, 1)  # row-major: (row, depth)
        for rows, logp in lens_log_probs(lab, flat):
            values, ids = logp.topk(k, dim=-1)
            top_p.view(-1, k)[rows], top_i.view(-1, k)[rows] = values.exp().cpu(), ids.cpu()
            tgt = row_target.repeat_interleave(n_depths)[rows].to(logp.device)
            picked = logp.gather(-1, tgt.clamp(min=0)[:, None])
            t_prob.view(-1)[rows] = picked.squeeze(-1).exp().cpu()
            t_rank.view(-1)[rows] = (logp > picked).sum(-1).cpu()
        no_target = row_target < 0  # rows of prompts without a target: no probability, rank -1
        t_prob[no_target], t_rank[no_target] = float("nan"), -1
        ids_of = {p: lab.tokenize(prompts[p])["input_ids"][0].tolist() for p in set(prompt_of.tolist())}
        has_target = any(t is not None for t in target_ids)
        return LensResult(
            layers=layer_labels(lab), prompts=prompts, prompt_index=prompt_of.tolist(), positions=position_of.tolist(),
            tokens=[_token_text(lab, ids_of[p][pos]) for p, pos in zip(prompt_of.tolist(), position_of.tolist())],
            top_tokens=[[[_token_text(lab, t) for t in depth] for depth in row] for row in top_i.tolist()],
            top_ids=top_i.tolist(), top_probs=top_p.tolist(),
            target=[None if targets[p] is None else str(targets[p]) for p in prompt_of.tolist()] if has_target else [],
            target_prob=t_prob.tolist() if has_target else [],
            target_rank=t_rank.tolist() if has_target else [],
            fingerprint=fingerprint(lab),
        )
