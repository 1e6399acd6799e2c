"""Per-unit quantization sensitivity and a mixed-precision plan, after FlexQ ("FlexQ: Efficient
Post-training INT6 Quantization for LLM Serving via Algorithm-System Co-Design", Zhang et al.,
2025, arXiv 2508.04405): 6-bit weights everywhere, 8-bit activations kept in the layers that a
layer-wise sensitivity analysis finds most sensitive.

`sensitivity(lab, "w6a6", unit="layer")` quantizes one unit (a decoder block, or one linear) at a
time, everything else in full precision, and measures KL(fp ‖ quantized) and perplexity on fixed
evaluation windows. The recipe is calibrated once; units are switched on and off in place (the
quantized weights and the float ones they came from are both kept), so each unit costs one
forward pass per window rather than a copy and a calibration. Calibrating the single-unit recipe
`w6@blocks.3.* a6@blocks.3.*` gives the same model (tested): transforms are exact in floating
point and static input scales are calibrated on float inputs either way.
`result.plan(a8=k)` (or `plan(threshold=kl)`) is the recipe string with 8-bit inputs on the k most
sensitive units, in the override grammar: `w6 a6 a8@blocks.3.* a8@blocks.0.*`.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from actlab.compress.qlinear import QuantLinear
from actlab.compress.recipe import QuantSpec, Recipe
from actlab.data.windows import token_windows
from actlab.errors import ActlabError
from actlab.eval.common import fingerprint, logits, progress_bar
from actlab.eval.divergence import token_kl
from actlab.eval.perplexity import window_nll_sum

UNITS = ("layer", "linear")
METRICS = {"kl": "kl", "ppl": "delta_pct"}  # metric -> the row key it ranks by


@dataclass
class Sensitivity:
    """Per-unit KL and ΔPPL of quantizing that unit alone (FlexQ-style analysis, arXiv 2508.04405),
    the row with every unit quantized, and the shared protocol."""

    model: dict
    recipe: str
    unit: str
    metric: str
    protocol: dict
    base_ppl: float
    rows: list[dict] = field(default_factory=list)  # unit, pattern, linears, inputs, kl, ppl, delta_pct (model order)
    full: dict = field(default_factory=dict)        # every unit quantized
    seconds: float = 0.0

    def ranking(self) -> list[dict]:
        """Rows, most sensitive first by `metric`."""
        return sorted(self.rows, key=lambda r: -r[METRICS[self.metric]])

    def plan(self, a8: int | None = None, threshold: float | None = None) -> str:
        """The recipe with 8-bit inputs (same granularity) on the `a8` most sensitive units, or on
        every unit whose metric is at least `threshold`; a string `Recipe.parse` and `compare` take."""
        if (a8 is None) == (threshold is None):
            raise ActlabError("plan: give exactly one of a8=<units> or threshold=<metric value>")
        if a8 is not None and not 0 <= a8 <= len(self.rows):
            raise ActlabError(f"plan: a8 must be between 0 and {len(self.rows)} units, got {a8}")
        key = METRICS[self.metric]
        chosen = self.ranking()[:a8] if a8 is not None else [r for r in self.ranking() if r[key] >= threshold]
        recipe = Recipe.parse(self.recipe)
        for r in chosen:
            if len(r["inputs"]) != 1 or not re.match(r"int\d+:", r["inputs"][0]):
                raise ActlabError(f"plan: the inputs of {r['unit']} are {', '.join(r['inputs'])}, not one int format "
                                  "to raise to 8 bits (try unit='linear')")
            recipe.quantizer.overrides.append((r["pattern"], "a", re.sub(r"^int\d+", "int8", r["inputs"][0])))
        return str(recipe)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "recipe": self.recipe, "unit": self.unit, "metric": self.metric,
                "protocol": self.protocol, "base_ppl": self.base_ppl, "full": self.full, "rows": self.rows,
                "seconds": self.seconds}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self):
        """A Rich table in model order: unit, KL, ΔPPL %, rank by the metric."""
        from rich.table import Table

        rank = {r["unit"]: i + 1 for i, r in enumerate(self.ranking())}
        t = Table(title=f"{self.model.get('name', '?')}: {self.recipe} one {self.unit} at a time, "
                        f"{self.protocol.get('corpus', '?')} seq {self.protocol.get('seq_len')}, "
                        f"{self.protocol.get('tokens_scored', 0):,} tokens (fp PPL {self.base_ppl:.3f})")
        for col in ("unit", "KL", "ΔPPL %", f"rank ({self.metric})"):
            t.add_column(col, justify="left" if col == "unit" else "right")
        for r in [*self.rows, self.full]:
            t.add_row(r["unit"], f"{r['kl']:.5f}", f"{r['delta_pct']:+.3f}", str(rank.get(r["unit"], "—")))
        return t


class UnitSwitch:
    """Turns the quantization of groups of `QuantLinear`s on and off in place: on, a linear has
    its quantized weight, kernel, low-rank path and input quantizer; off, its float weight only."""

    def __init__(self, linears: list[QuantLinear], float_weights: dict[str, torch.Tensor]) -> None:
        self.linears = linears
        self.on_state = {q.name: (q.weight.data, q.kernel, q.lowrank) for q in linears}
        self.off_state = {q.name: (float_weights[q.name], None, None) for q in linears}

    def only(self, names: set[str]) -> None:
        """Quantize the linears in `names`, none of the others."""
        for q in self.linears:
            on = q.name in names
            q.weight.data, q.kernel, q.lowrank = (self.on_state if on else self.off_state)[q.name]
            q.quantize_inputs = on


def units_of(linears: list[QuantLinear], unit: str) -> dict[str, set[str]]:
    """Unit name -> names of its quantized linears: `blocks.3` (layer) or each linear (linear)."""
    out: dict[str, set[str]] = {}
    for q in linears:
        if q.weight_quantizer is None and q.input_quantizer is None and q.kernel is None:
            continue
        name = ".".join(q.name.split(".")[:2]) if unit == "layer" and q.name.startswith("blocks.") else q.name
        out.setdefault(name, set()).add(q.name)
    return out


def _pattern(unit: str, name: str) -> str:
    return f"{name}.*" if unit == "layer" and name.startswith("blocks.") else name


def check_options(recipe: Recipe, unit: str, metric: str) -> None:
    """Refuse a bad unit, metric or recipe (before any model work)."""
    if unit not in UNITS:
        raise ActlabError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if metric not in METRICS:
        raise ActlabError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if not isinstance(recipe.quantizer, QuantSpec):
        raise ActlabError(f"sensitivity needs a recipe with a w/a quantization stage (like w6a6), got {str(recipe)!r}")


def switchable(lab, recipe: Recipe, unit: str, calibration, samples: int, seq_len: int, batch_size: int = 4,
               progress: bool = False) -> tuple[Any, UnitSwitch, dict[str, set[str]]]:
    """The calibrated `recipe` as a lab whose units can be switched on and off, the switch, and
    the units (see `units_of`). The recipe is calibrated once, and its transforms alone once."""
    check_options(recipe, unit, "kl")
    qlab = recipe.calibrate(lab, calibration, samples, seq_len, batch_size=batch_size, progress=progress)
    # the same transforms and linears (lm_head too when targeted), nothing quantized: the float
    # weights each unit returns to when off
    quant = recipe.quantizer
    unquantized = QuantSpec(overrides=[(p, "w", None) for p, _, _ in quant.overrides])
    flab = Recipe([*recipe.stages[:recipe.stages.index(quant)], unquantized]).calibrate(
        lab, calibration, samples, seq_len, batch_size=batch_size, progress=progress)
    linears = [m for m in qlab.model.modules() if isinstance(m, QuantLinear)]
    float_weights = {m.name: m.weight.data for m in flab.model.modules() if isinstance(m, QuantLinear)}
    units = units_of(linears, unit)
    if not units:
        raise ActlabError(f"recipe {str(recipe)!r} quantizes nothing to analyse")
    return qlab, UnitSwitch(linears, float_weights), units


def sensitivity(lab, recipe: str | Recipe = "w6a6", unit: str = "layer", metric: str = "kl",
                corpus="austen:test", seq_len: int = 512, max_tokens: int | None = 4096, *,
                calibration="austen:train", samples: int = 32, batch_size: int = 4,
                progress: bool = True) -> Sensitivity:
    """FlexQ-style sensitivity (arXiv 2508.04405): quantize one `unit` ("layer" or "linear") at a
    time with `recipe` and measure KL(fp ‖ quantized) and ΔPPL on `corpus`; see the module docstring."""
    started = time.perf_counter()
    parsed = Recipe.parse(recipe)
    check_options(parsed, unit, metric)
    qlab, switch, units = switchable(lab, parsed, unit, calibration, samples, seq_len, batch_size, progress)
    configs = {**units, "all": set().union(*units.values())}
    kl = dict.fromkeys(configs, 0.0)
    nll = dict.fromkeys(configs, 0.0)
    base_nll = 0.0
    windows = token_windows(lab.tokenizer, corpus, seq_len, max_tokens=max_tokens)
    positions = 0
    with torch.inference_mode(), progress_bar(len(windows) * len(configs), "sensitivity", progress) as advance:
        for input_ids, loss_mask in windows.batches(batch_size):
            ref = logits(lab, input_ids)
            base_nll += window_nll_sum(ref, input_ids, loss_mask)
            positions += input_ids.numel()
            for name, members in configs.items():
                switch.only(members)
                out = logits(qlab, input_ids)
                kl[name] += sum(float(token_kl(ref[i], out[i])[0].double().sum()) for i in range(len(input_ids)))
                nll[name] += window_nll_sum(out, input_ids, loss_mask)
                advance(len(input_ids))
    n = windows.tokens_scored
    base_ppl = math.exp(base_nll / n)
    inputs = {q.name: str(q.input_quantizer) if q.input_quantizer is not None else "fp" for q in switch.linears}

    def row(name: str) -> dict:
        ppl = math.exp(nll[name] / n)
        return {"unit": name, "pattern": _pattern(unit, name), "linears": len(configs[name]),
                "inputs": sorted({inputs[m] for m in configs[name]}),
                "kl": kl[name] / positions, "ppl": ppl, "delta_pct": 100 * (ppl / base_ppl - 1)}

    return Sensitivity(model=fingerprint(lab), recipe=str(parsed), unit=unit, metric=metric,
                       protocol={**windows.protocol, "kl_positions": "all",
                                 "calibration": qlab.quantization.calibration},
                       base_ppl=base_ppl, rows=[row(u) for u in units], full=row("all"),
                       seconds=time.perf_counter() - started)
