"""`compare`: every recipe on the same windows of the same corpus, one table.

Each row calibrates its recipe on the same calibration windows, then measures perplexity on the
evaluation windows and KL(fp ‖ quantized) with top-1 agreement on the first `kl_tokens` tokens of
them. A row keeps its recipe, calibration protocol, folds and bits, so the table is reproducible.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass, field
from typing import Any

from actlab.compress.recipe import Recipe
from actlab.eval.divergence import kl_divergence
from actlab.eval.perplexity import perplexity


@dataclass
class Comparison:
    """Rows of a `compare` run (dicts) and the shared evaluation protocol."""

    model: dict
    protocol: dict
    rows: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "protocol": self.protocol, "rows": self.rows}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self):
        """A Rich table: recipe, bits, PPL, ΔPPL %, KL, top-1 agreement, calibration time."""
        from rich.table import Table

        t = Table(title=f"{self.model.get('name', '?')}: {self.protocol.get('corpus', '?')}, "
                        f"seq {self.protocol.get('seq_len')}, {self.protocol.get('tokens_scored', '?'):,} tokens")
        for col in ("recipe", "bits (W / A)", "PPL", "ΔPPL %", "KL", "top-1", "calib s"):
            t.add_column(col, justify="left" if col == "recipe" else "right")
        for r in self.rows:
            t.add_row(r["recipe"], r["bits"], f"{r['ppl']:.3f}", f"{r['delta_pct']:+.2f}",
                      "—" if r["kl"] is None else f"{r['kl']:.4f}",
                      "—" if r["top1"] is None else f"{r['top1']:.3f}", f"{r['calibration_seconds']:.0f}")
        return t


def _bits_label(bits: dict) -> str:
    inputs = bits.get("inputs") or []
    a = "16+" if not inputs else ",".join(sorted({i.split(":")[0] for i in inputs}))
    return f"{bits['weights']:.2f} / {a}"


def compare(lab, recipes, corpus="austen:test", seq_len: int = 512, max_tokens: int | None = 16384, *,
            calibration="austen:train", samples: int = 64, kl_tokens: int = 4096, batch_size: int = 4,
            progress: bool = True) -> Comparison:
    """Calibrate and evaluate every recipe (strings, files or `Recipe`s) on one protocol."""
    parsed = [Recipe.parse(r) for r in recipes]  # every recipe is checked before any work starts
    base = perplexity(lab, corpus, seq_len, max_tokens=max_tokens, batch_size=batch_size, progress=progress)
    out = Comparison(model=base.fingerprint, protocol=base.protocol)
    for recipe in parsed:
        if not recipe.stages:
            out.rows.append({"recipe": "fp", "bits": "32.00 / 16+", "ppl": base.ppl, "delta_pct": 0.0, "kl": 0.0,
                             "top1": 1.0, "calibration_seconds": 0.0, "calibration": None, "folds": {}})
            continue
        qlab = recipe.calibrate(lab, calibration, samples, seq_len, batch_size=batch_size, progress=progress)
        res = perplexity(qlab, corpus, seq_len, max_tokens=max_tokens, batch_size=batch_size, progress=progress)
        kl = kl_divergence(qlab, None, corpus, seq_len, max_tokens=kl_tokens, batch_size=batch_size,
                           reference=lab, progress=progress) if kl_tokens else None
        info = qlab.quantization
        out.rows.append({"recipe": info.recipe, "bits": _bits_label(info.bits), "ppl": res.ppl,
                         "delta_pct": 100 * (res.ppl / base.ppl - 1), "kl": None if kl is None else kl.kl_mean,
                         "top1": None if kl is None else kl.top1_agreement, "calibration_seconds": info.seconds,
                         "calibration": info.calibration, "folds": info.groups, "bits_detail": info.bits})
        del qlab
        gc.collect()
    return out
