"""`kv_compare`: KV-cache methods side by side, both protocols, one table."""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, field

from rich.console import Console
from rich.table import Table

from actlab.compress.kv.calibration import reusing
from actlab.compress.kv.presets import kv_method
from actlab.eval.cache_perplexity import cache_perplexity
from actlab.eval.perplexity import perplexity


@dataclass
class KVRow:
    method: str
    ppl: float  # teacher forced, fake quantization, every token of the windows
    delta_pct: float
    cache_ppl: float  # cache in the loop, the last `score` tokens of each window
    cache_delta_pct: float
    cache_forced_ppl: float  # teacher forced on the same tokens as cache_ppl
    bytes_per_token: float
    compression: float
    calibration_seconds: float
    memory: dict = field(default_factory=dict)


@dataclass
class KVComparison:
    """Rows against the unquantized model; `protocol` holds both evaluation protocols."""

    model: str
    base_ppl: float
    base_cache_ppl: float
    rows: list[KVRow]
    protocol: dict

    def to_dict(self) -> dict:
        return {"model": self.model, "base_ppl": self.base_ppl, "base_cache_ppl": self.base_cache_ppl,
                "protocol": self.protocol, "rows": [asdict(r) for r in self.rows]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> Table:
        p = self.protocol
        t = Table(title=f"KV cache on {self.model}: fake quant over {p['seq_len']}-token windows; "
                        f"cache in the loop: {p['context']} + {p['score']}")
        for col in ("method", "PPL", "ΔPPL %", "cache PPL", "cache ΔPPL %", "forced, same tokens",
                    "bytes/token", "× vs fp16"):
            t.add_column(col, justify="left" if col == "method" else "right")
        t.add_row("float (no cache quantization)", f"{self.base_ppl:.3f}", "0.00", f"{self.base_cache_ppl:.3f}",
                  "0.00", f"{self.base_cache_ppl:.3f}", "", "")
        for r in self.rows:
            t.add_row(r.method, f"{r.ppl:.3f}", f"{r.delta_pct:+.2f}", f"{r.cache_ppl:.3f}", f"{r.cache_delta_pct:+.2f}",
                      f"{r.cache_forced_ppl:.3f}", f"{r.bytes_per_token:,.0f}", f"{r.compression:.2f}")
        return t

    def __str__(self) -> str:
        buffer = io.StringIO()
        Console(file=buffer, width=160, color_system=None).print(self.table())
        return buffer.getvalue().rstrip()


def kv_compare(lab, methods, corpus="austen:test", *, seq_len: int = 512, max_tokens: int | None = None,
               context: int = 384, score: int = 128, cache_tokens: int | None = None,
               calibration="austen:train", samples: int = 16, progress: bool = True, on_row=None) -> KVComparison:
    """Evaluate KV-cache `methods` (names or method objects) under one protocol: fake-quant
    perplexity over `seq_len` windows (up to `max_tokens`), and cache-in-the-loop perplexity of
    the last `score` tokens of `context + score` windows (up to `cache_tokens`), with the bytes the
    packed cache held. Each method is calibrated on `samples` windows of `calibration`."""
    methods = [kv_method(m) if isinstance(m, str) else m for m in methods]  # bad names fail before any work
    base = perplexity(lab, corpus, seq_len, max_tokens=max_tokens, progress=progress)
    base_cache = cache_perplexity(lab, corpus, context, score, max_tokens=cache_tokens, progress=progress)
    rows = []
    with reusing():
        for kv in methods:
            rows.append(_row(lab, kv, corpus, base, base_cache, seq_len, max_tokens, context, score, cache_tokens,
                             calibration, samples, progress))
            if on_row is not None:
                on_row(rows[-1])
    protocol = {"seq_len": seq_len, "tokens_scored": base.tokens_scored, "context": context, "score": score,
                "cache_tokens_scored": base_cache.tokens_scored, "corpus": base.protocol,
                "calibration": {"corpus": str(calibration), "samples": samples, "seq_len": seq_len}}
    return KVComparison(lab.name, base.ppl, base_cache.ppl, rows, protocol)


def _row(lab, kv, corpus, base, base_cache, seq_len, max_tokens, context, score, cache_tokens, calibration, samples,
         progress) -> KVRow:
    started = time.perf_counter()
    kv.calibrate(lab, calibration, samples=samples, seq_len=seq_len, progress=progress)
    seconds = time.perf_counter() - started
    fake = perplexity(lab, corpus, seq_len, max_tokens=max_tokens, kv=kv, progress=progress)
    cached = cache_perplexity(lab, corpus, context, score, kv=kv, max_tokens=cache_tokens, progress=progress)
    m = cached.memory
    return KVRow(kv.label, fake.ppl, 100 * (fake.ppl / base.ppl - 1), cached.ppl,
                 100 * (cached.ppl / base_cache.ppl - 1), cached.teacher_forced_ppl, m["bytes_per_token"],
                 m["compression"], seconds, m)
