"""Result objects of `actlab.eval`: dataclasses that print as tables and round-trip through JSON.

Every result carries its `protocol` (corpus, windows, tokens) and the model `fingerprint`
beside the numbers; `same_protocol(a, b)` says whether two results may be compared.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rich.console import Console
from rich.table import Table

from actlab.errors import ActlabError


def plain_text(*renderables: Any, width: int = 100) -> str:
    """What rich would print for `renderables` (tables, results), as plain text without colour."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    for renderable in renderables:
        console.print(renderable)
    return buffer.getvalue().rstrip("\n")


RESULT_TYPES: dict[str, type["Result"]] = {}  # kind -> class; every subclass registers itself


@dataclass
class Result:
    """Shared behaviour: `to_dict`, `to_json`, `from_dict`, a rich table and its text form.

    Subclasses (also those of other packages, e.g. `actlab.read`) register under their `kind`, so
    `result_from_dict` rebuilds any of them.
    """

    kind: ClassVar[str] = "result"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        RESULT_TYPES[cls.kind] = cls

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict, with `kind` naming the result type."""
        return {"kind": self.kind, **dataclasses.asdict(self)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Rebuild a result from `to_dict()` output (any class: picked by `kind`)."""
        data = dict(data)
        kind = data.pop("kind", cls.kind)
        target = RESULT_TYPES.get(kind)
        if cls is Result and target is not None and target.from_dict.__func__ is not Result.from_dict.__func__:
            return target.from_dict(data)  # a subclass that rebuilds nested parts itself
        if target is None or (cls is not Result and target is not cls):
            raise ActlabError(f"cannot read a '{kind}' result as {cls.__name__}")
        names = {f.name for f in dataclasses.fields(target)}
        return target(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json(cls, text: str) -> Any:
        return cls.from_dict(json.loads(text))

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) rows for the table; subclasses put their numbers first."""
        p = self.protocol  # type: ignore[attr-defined]
        name = self.fingerprint.get("name", "?")  # type: ignore[attr-defined]
        rows = [("model", str(name))]
        if "corpus" in p:
            split = f":{p['split']}" if p.get("split") else ""
            rows.append(("corpus", f"{p['corpus']}{split}"))
            rows.append(("windows", f"{p['n_windows']} × {p['seq_len']} (stride {p['stride']}, bos {p['bos']})"))
        return rows

    def __rich__(self) -> Table:
        table = Table(title=self.kind, show_header=False, title_justify="left")
        table.add_column("", style="bold")
        table.add_column("", justify="right")
        for label, value in self.rows():
            table.add_row(label, value)
        return table

    def __str__(self) -> str:
        return plain_text(self)


@dataclass
class PerplexityResult(Result):
    """Perplexity = exp(mean next-token negative log-likelihood over the scored tokens)."""

    kind: ClassVar[str] = "perplexity"
    ppl: float
    nll_mean: float
    tokens_scored: int
    protocol: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    dtype: str = ""
    seconds: float = 0.0
    edits: Any = None

    def rows(self) -> list[tuple[str, str]]:
        return [("perplexity", f"{self.ppl:.4f}"), ("nll / token", f"{self.nll_mean:.5f}"),
                ("tokens scored", f"{self.tokens_scored:,}"), *super().rows(),
                ("dtype", self.dtype), ("seconds", f"{self.seconds:.1f}")]


@dataclass
class DivergenceResult(Result):
    """Per-token KL(P_reference ‖ P_edited) and top-1 agreement over all window positions."""

    kind: ClassVar[str] = "divergence"
    kl_mean: float
    kl_std: float
    kl_quantiles: dict[str, float]
    top1_agreement: float
    tokens: int
    protocol: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    reference_fingerprint: dict[str, Any] = field(default_factory=dict)
    edits: Any = None
    dtype: str = ""
    seconds: float = 0.0

    def rows(self) -> list[tuple[str, str]]:
        quantiles = ", ".join(f"{k} {v:.3g}" for k, v in self.kl_quantiles.items())
        reference = self.reference_fingerprint.get("name", "?")
        return [("KL mean (nats)", f"{self.kl_mean:.6g}"), ("KL std", f"{self.kl_std:.6g}"),
                ("KL quantiles", quantiles), ("top-1 agreement", f"{self.top1_agreement:.4f}"),
                ("tokens", f"{self.tokens:,}"), *super().rows(), ("reference", str(reference)),
                ("edits", _short(self.edits)), ("seconds", f"{self.seconds:.1f}")]


@dataclass
class EntropyResult(Result):
    """Mean next-token entropy (nats) of the model's predictive distribution."""

    kind: ClassVar[str] = "entropy"
    entropy_mean: float
    entropy_std: float
    tokens: int
    protocol: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    edits: Any = None
    dtype: str = ""
    seconds: float = 0.0

    def rows(self) -> list[tuple[str, str]]:
        extra = [("prompts", f"{self.protocol['prompts']} (last position)")] if "prompts" in self.protocol else []
        return [("entropy (nats)", f"{self.entropy_mean:.5f}"), ("entropy std", f"{self.entropy_std:.5f}"),
                ("positions", f"{self.tokens:,}"), *super().rows(), *extra, ("seconds", f"{self.seconds:.1f}")]


@dataclass
class CachePerplexityResult(Result):
    """Perplexity of the last `score` tokens of each window, decoded one token at a time with a
    KV cache in the loop after a prefill of `context` tokens; beside it the teacher-forced
    perplexity of the same tokens (with the method's fake quantization) and the cache's bytes."""

    kind: ClassVar[str] = "cache_perplexity"
    ppl: float
    nll_mean: float
    teacher_forced_ppl: float | None
    tokens_scored: int
    method: str
    memory: dict[str, Any] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    dtype: str = ""
    seconds: float = 0.0

    def rows(self) -> list[tuple[str, str]]:
        tf = "—" if self.teacher_forced_ppl is None else f"{self.teacher_forced_ppl:.4f}"
        rows = [("perplexity (cache in the loop)", f"{self.ppl:.4f}"), ("perplexity (teacher forced)", tf),
                ("tokens scored", f"{self.tokens_scored:,}"), ("method", self.method)]
        if self.memory:
            rows += [("bytes / token", f"{self.memory['bytes_per_token']:,.1f}"),
                     ("compression vs fp16", f"{self.memory['compression']:.2f}×")]
        p = self.protocol
        return [*rows, *super().rows(), ("context + score", f"{p.get('context')} + {p.get('score')}"),
                ("dtype", self.dtype), ("seconds", f"{self.seconds:.1f}")]


@dataclass
class MultipleChoiceResult(Result):
    """Accuracy over questions (multiple choice from log-likelihoods, or greedy answers to cloze facts)."""

    kind: ClassVar[str] = "multiple_choice"
    accuracy: float
    n: int
    correct: list[bool] = field(default_factory=list)
    protocol: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    dtype: str = ""
    seconds: float = 0.0
    edits: Any = None

    def rows(self) -> list[tuple[str, str]]:
        p = self.protocol
        return [("accuracy", f"{self.accuracy:.4f}"), ("questions", f"{self.n:,}"),
                ("chance", f"{p.get('chance', 0):.3f}"), ("scoring", str(p.get("scoring"))), *super().rows(),
                ("edits", _short(self.edits)), ("dtype", self.dtype), ("seconds", f"{self.seconds:.1f}")]


def _short(value: Any, limit: int = 60) -> str:
    text = "none" if value is None else json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"


def result_from_dict(data: dict[str, Any]) -> Any:
    """Any result from its `to_dict()` form, the class picked by `kind`."""
    return Result.from_dict(data)


def result_from_json(text: str) -> Any:
    """Any result from its `to_json()` form."""
    return Result.from_json(text)


def same_protocol(a: Any, b: Any) -> bool:
    """Whether two results (or protocol dicts) were measured on the same windows of the same tokens."""
    pa = a if isinstance(a, dict) else a.protocol
    pb = b if isinstance(b, dict) else b.protocol
    return pa == pb

