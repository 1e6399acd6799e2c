"""Quantization recipes: transforms then a quantization stage, as a string or a YAML/TOML file.

```text
smoothquant(alpha=0.5) | w8:per_channel a8:per_tensor:static
rotate | w4a4
outliertune | w8a8 w8@blocks.0.* a16@*.down_proj      # overrides: term@module-pattern
llmfp4(w=4,a=4)
w8a8 kernel=int8                                      # real int8 matmuls (Int8Linear)
rotate | w4 | eora(rank=64)                           # low-rank compensation after quantization
```

Stages are separated by `|`; every stage but the last is a transform (`smoothquant`,
`outliertune`, `rotate`, `crossquant`), the last may be a quantization stage: terms `w<spec>`
(weights) and `a<spec>` (linear inputs), `w8a8`-style shorthands, `fp` (nothing), `kernel=int8`.
A spec is a `Quantizer` spec (`int4:per_group:64:clip=mse`, `fp8_e4m3`, `nf4:per_group:64`)
where a leading number means `int<number>` and `16`/`32`/`fp` mean "not quantized"; weights
default to per_channel, inputs to per_token (per_tensor when `static`). Terms apply to every
linear inside the decoder blocks; `term@pattern` overrides them for modules whose short name
(`blocks.3.mlp.down_proj`, `lm_head`) or input site (`blocks.3.mlp.act`) matches the glob;
a pattern matching `lm_head` brings `lm_head` in. `llmfp4(...)` is a quantization stage of its own.

A file holds the same either as `recipe = "..."` or as keys `transforms` (list of names or
`{name: {arg: value}}`), `weights`, `inputs`, `overrides` (`{pattern: {weights, inputs}}`) and
`kernel`.

One compensation stage (`eora(rank=...)`, `svd(rank=...)`, see `actlab.compress.lowrank`) may
follow the quantization stage: it needs the quantized weights and the float ones they came from.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from actlab.compress.calibration import group_stats, observing, run_windows
from actlab.compress.crossquant import CrossQuantizer
from actlab.compress.groups import LinearGroup, find_groups
from actlab.compress.int8 import Int8Linear, decoder_linears
from actlab.compress.llmfp4 import LLMFP4
from actlab.compress.lowrank import COMPENSATIONS
from actlab.compress.qlinear import QuantLinear, swap_in
from actlab.compress.quantizer import Quantizer
from actlab.compress.transforms import TRANSFORMS
from actlab.errors import ActlabError, did_you_mean

STAGES = {**TRANSFORMS, "llmfp4": LLMFP4, **COMPENSATIONS}
_NONE = ("fp", "none", "16", "32", "bf16", "fp16", "fp32")
_CALL = re.compile(r"^([a-z_][a-z0-9_]*)\s*(?:\((.*)\))?$", re.S)


# --------------------------------------------------------------------------- quantization stage
def normalize_spec(side: str, spec: str) -> str | None:
    """A term's spec as a full `Quantizer` spec (None: not quantized); raises on a bad one."""
    spec = spec.strip().lower()
    if spec in _NONE:
        return None
    m = re.match(r"^(\d+)(.*)$", spec)
    if m:
        spec = f"int{m.group(1)}{m.group(2)}"
    parts = spec.split(":")
    if not any(p in ("per_tensor", "per_token", "per_channel", "per_group") for p in parts):
        default = "per_channel" if side == "w" else ("per_tensor" if "static" in parts else "per_token")
        parts.insert(1, default)
    spec = ":".join(parts)
    Quantizer.parse(spec)  # validates
    return spec


def compact_spec(side: str, spec: str | None) -> str:
    """The shortest term spelling of a normalized spec: int8:per_channel -> 8 for weights."""
    if spec is None:
        return "fp"
    parts = spec.split(":")
    default = "per_channel" if side == "w" else ("per_tensor" if "static" in parts else "per_token")
    if len(parts) > 1 and parts[1] == default:
        del parts[1]
    m = re.fullmatch(r"int(\d+)", parts[0])
    if m:
        parts[0] = m.group(1)
    return ":".join(parts)


@dataclass
class QuantSpec:
    """Weights and inputs quantizer specs for the decoder linears, plus ordered overrides."""

    weights: str | None = None
    inputs: str | None = None
    overrides: list[tuple[str, str, str | None]] = field(default_factory=list)  # (pattern, "w"|"a", spec)
    kernel: str | None = None
    is_quantizer = True

    def resolve(self, name: str, site: str | None = None) -> tuple[str | None, str | None]:
        """(weights, inputs) specs of the linear `name` whose input is `site`."""
        w, a = (self.weights, self.inputs) if name.startswith("blocks.") else (None, None)
        for pattern, side, spec in self.overrides:
            if fnmatch.fnmatchcase(name, pattern) or (site is not None and fnmatch.fnmatchcase(site, pattern)):
                w, a = (spec, a) if side == "w" else (w, spec)
        return w, a

    def targets_lm_head(self) -> bool:
        return any(fnmatch.fnmatchcase("lm_head", p) for p, _, _ in self.overrides)

    def __str__(self) -> str:
        terms = []
        if self.weights:
            terms.append("w" + compact_spec("w", self.weights))
        if self.inputs:
            terms.append("a" + compact_spec("a", self.inputs))
        terms += [f"{side}{compact_spec(side, spec)}@{p}" for p, side, spec in self.overrides]
        if self.kernel:
            terms.append(f"kernel={self.kernel}")
        return " ".join(terms) or "fp"

    def apply(self, state: "CalibrationState") -> None:
        plans = {q.name: self.resolve(q.name, q.site) for q in state.linears}
        for q in state.linears:
            a = plans[q.name][1]
            if a is not None:
                base = Quantizer.parse(a)
                if q.input_clip is not None and base.clip == "none":  # learned by a transform (FlatQuant)
                    base.clip = q.input_clip
                q.input_quantizer = CrossQuantizer(base.format, q.cross_alpha) if q.cross_alpha is not None else base
        static = [q for q in state.linears if q.input_quantizer is not None and not q.input_quantizer.dynamic]
        if static:
            state.calibrate_inputs(static)
        for q in state.linears:
            w = plans[q.name][0]
            if w is not None:
                q.clip_weight()
            if self.kernel == "int8" and plans[q.name] != (None, None):
                _check_int8(q, plans[q.name])
                q.kernel = Int8Linear.from_linear(q)
                q.weight_quantizer, q.input_quantizer = Quantizer.parse(w), None
            elif w is not None:
                wq = Quantizer.parse(w)
                with torch.no_grad():
                    q.weight.data = wq(q.weight.data)
                q.weight_quantizer = wq


def _check_int8(q: QuantLinear, plan) -> None:
    if plan != ("int8:per_channel", "int8:per_token") or q.cross_alpha is not None:
        raise ActlabError(f"kernel=int8 runs int8 per_channel weights with int8 per_token inputs; "
                          f"{q.name} asks for w={plan[0]} a={plan[1]}")


def _parse_quant_stage(text: str) -> QuantSpec:
    spec = QuantSpec()
    for term in text.split():
        low = term.lower()
        if low in _NONE:
            continue
        if low.startswith("kernel="):
            kernel = low.split("=", 1)[1]
            if kernel != "int8":
                raise ActlabError(f"term {term!r}: the only kernel is int8")
            spec.kernel = kernel
            continue
        m = re.fullmatch(r"w(\d+)a(\d+)", low)
        if m:
            spec.weights, spec.inputs = normalize_spec("w", m.group(1)), normalize_spec("a", m.group(2))
            continue
        m = re.fullmatch(r"([wa])([^@]+)(?:@(.+))?", term)
        if not m:
            raise ActlabError(f"term {term!r}: expected w<spec>, a<spec>, w8a8, fp or kernel=int8 "
                              "(optionally @pattern)")
        side, value, pattern = m.groups()
        try:
            normalized = normalize_spec(side, value)
        except ActlabError as e:
            raise ActlabError(f"term {term!r}: {e}") from None
        if pattern:
            spec.overrides.append((pattern, side, normalized))
        elif side == "w":
            spec.weights = normalized
        else:
            spec.inputs = normalized
    return spec


# --------------------------------------------------------------------------- transforms parsing
def literal(text: str) -> Any:
    """A recipe argument's value: bool, int, float, else the unquoted string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(low)
        except ValueError:
            pass
    return text.strip().strip("'\"")


def _parse_call(text: str):
    m = _CALL.match(text.strip())
    if not m or m.group(1) not in STAGES:
        return None
    name, args = m.group(1), m.group(2)
    cls = STAGES[name]
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for item in filter(None, (a.strip() for a in (args or "").split(","))):
        if "=" not in item:
            raise ActlabError(f"{name}: argument {item!r} must be name=value; arguments: {', '.join(names)}")
        k, v = (s.strip() for s in item.split("=", 1))
        if k not in names:
            raise ActlabError(f"{name}: unknown argument {k!r}{did_you_mean(k, names)}; arguments: {', '.join(names)}")
        kwargs[k] = literal(v)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ActlabError(f"{name}: {e}") from None


def _stage_str(stage) -> str:
    if isinstance(stage, (QuantSpec, LLMFP4)):
        return str(stage)
    name = next(k for k, v in STAGES.items() if isinstance(stage, v))
    args = [f"{f.name}={getattr(stage, f.name)}" for f in dataclasses.fields(stage)
            if getattr(stage, f.name) != f.default]
    return f"{name}({','.join(args)})" if args else name


# --------------------------------------------------------------------------- recipe
@dataclass
class Recipe:
    """Transforms (applied in order) and an optional quantization stage; see the module docstring."""

    stages: list = field(default_factory=list)

    @property
    def quantizer(self):
        return next((s for s in self.stages if getattr(s, "is_quantizer", False)), None)

    def __str__(self) -> str:
        return " | ".join(_stage_str(s) for s in self.stages) or "fp"

    @classmethod
    def parse(cls, recipe: "str | Path | Recipe") -> "Recipe":
        """From a recipe string or a `.yaml`/`.yml`/`.toml` file; errors name the bad stage."""
        if isinstance(recipe, Recipe):
            return recipe
        path = Path(str(recipe))
        if path.suffix.lower() in (".yaml", ".yml", ".toml"):
            return cls.parse(_file_to_string(path))
        text = str(recipe).strip()
        raw = [] if text.lower() in ("", "fp") else [s.strip() for s in text.split("|")]
        stages = []
        for i, part in enumerate(raw):
            where = f"bad recipe {text!r}: stage {i + 1} {part!r}"
            if not part:
                raise ActlabError(f"{where}: empty stage (two '|' in a row?)")
            try:
                stage = _parse_call(part)
                if stage is None:
                    head = part.split("(")[0].strip().lower()
                    if "(" in part or (re.fullmatch(r"[a-z_]+", head) and not re.fullmatch(r"[wa].*|fp|kernel=.*", head)):
                        raise ActlabError(f"unknown transform {head!r}{did_you_mean(head, STAGES)}; "
                                          f"transforms: {', '.join(STAGES)}")
                    stage = _parse_quant_stage(part)
            except ActlabError as e:
                raise ActlabError(f"{where}: {e}") from None
            _check_order(where, stages, stage)
            stages.append(stage)
        return cls(stages)

    def calibrate(self, lab, corpus="austen:train", samples: int = 64, seq_len: int = 512, *,
                  batch_size: int = 4, progress: bool = True, diagnostics: bool = False):
        """A new `Lab` over a private copy of the model with this recipe applied, calibrated on
        `samples` windows of `seq_len` tokens of `corpus`. The original `lab` is not touched."""
        from actlab.compress.diagnostics import LayerDiagnostics
        from actlab.data.windows import token_windows
        from actlab.lab import Lab

        started = time.perf_counter()
        windows = token_windows(lab.tokenizer, corpus, seq_len, max_tokens=samples * seq_len)
        ids = windows.input_ids[:samples]
        model = copy.deepcopy(lab.model)
        quant = self.quantizer
        lm_head = isinstance(quant, QuantSpec) and quant.targets_lm_head()
        prefix = lab.adapter.layers + "."

        def short_name(name, module):
            if name.startswith(prefix) and decoder_linears(name, module):
                return "blocks." + name[len(prefix):]
            return "lm_head" if lm_head and name == lab.adapter.lm_head else None

        linears = swap_in(model, short_name)
        if not linears:
            raise ActlabError(f"no nn.Linear layers to quantize in {lab.name} (Conv1D projections are not supported yet)")
        qlab = Lab(model, lab.tokenizer, f"{lab.name}[{self}]")
        qlab.reference = lab.reference
        groups = find_groups(qlab, linears, ids[:1, : min(16, ids.shape[1])])
        state = CalibrationState(model, linears, groups, ids, batch_size, progress)
        diag = LayerDiagnostics(state) if diagnostics else None
        split = self.stages.index(quant) if quant is not None else len(self.stages)
        for stage in self.stages[:split]:
            stage.apply(state)
        if diag is not None:
            diag.after_transforms()
        if split + 1 < len(self.stages):  # compensation stages compare with the float weights
            state.float_weights = {q.name: q.weight.detach().clone() for q in linears}
        for stage in self.stages[split:]:
            stage.apply(state)
        qlab.quantization = QuantizationInfo(
            recipe=str(self), calibration={**windows.protocol, "windows": int(ids.shape[0])},
            seconds=time.perf_counter() - started, groups={g.name: list(g.folded) for g in groups},
            bits=bits_summary(linears), layers=diag.finish() if diag is not None else None)
        return qlab


@dataclass
class CalibrationState:
    """What transforms and quantization stages work on."""

    model: torch.nn.Module
    linears: list[QuantLinear]
    groups: list[LinearGroup]
    windows: torch.Tensor
    batch_size: int = 4
    progress: bool = False
    float_weights: dict[str, torch.Tensor] | None = None  # before the quantization stage, for compensation

    def stats(self, groups, desc: str, sample_rows: int = 0):
        return group_stats(self.model, groups, self.windows, sample_rows, self.batch_size, self.progress, desc)

    def calibrate_inputs(self, linears: list[QuantLinear]) -> None:
        """Static input scales from float inputs (no layer quantizes while they are observed)."""
        for q in self.linears:
            q.quantize_inputs = False
        try:
            with observing(linears, lambda q, x2: q.input_quantizer.calibrate(x2)):
                run_windows(self.model, self.windows, self.batch_size, self.progress, "input scales",
                            lm_head=any(q.name == "lm_head" for q in linears))
        finally:
            for q in self.linears:
                q.quantize_inputs = True


@dataclass
class QuantizationInfo:
    """What a calibrated lab carries: recipe, calibration protocol, time, folds, bits, diagnostics."""

    recipe: str
    calibration: dict
    seconds: float
    groups: dict
    bits: dict
    layers: list | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def bits_summary(linears: list[QuantLinear]) -> dict:
    """Parameter-weighted effective bits of the quantized weights (low-rank factors counted as
    fp16 on top), and the input formats used."""
    total = n = 0.0
    inputs = set()
    for q in linears:
        numel = q.weight.numel()
        wq = q.weight_quantizer
        total += (wq.effective_bits(q.weight.shape) if wq is not None else 32) * numel
        total += 16 * sum(f.numel() for f in q.lowrank or ())
        n += numel
        if q.kernel is not None:
            inputs.add("int8:per_token")
        elif q.input_quantizer is not None:
            inputs.add(str(q.input_quantizer))
    return {"weights": total / n if n else 32.0, "inputs": sorted(inputs)}


def _check_order(where: str, stages: list, stage) -> None:
    """Transforms, then at most one quantization stage, then at most one compensation stage."""
    if getattr(stage, "is_compensation", False):
        name = _stage_str(stage).split("(")[0]
        if not any(getattr(s, "is_quantizer", False) for s in stages):
            raise ActlabError(f"{where}: {name} compensates quantized weights: put a quantization stage before it "
                              f"(e.g. 'w4 | {name}')")
        if getattr(stages[-1], "is_compensation", False):
            raise ActlabError(f"{where}: only one compensation stage may follow the quantization stage")
    elif stages and any(getattr(s, "is_quantizer", False) for s in stages):
        raise ActlabError(f"{where}: the quantization stage must come last "
                          f"(only {', '.join(COMPENSATIONS)} may follow it)")


def _file_to_string(path: Path) -> str:
    if not path.exists():
        raise ActlabError(f"recipe file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as e:  # the parsers' own messages say where
        raise ActlabError(f"recipe file {path}: {e}") from None
    if not isinstance(data, dict):
        raise ActlabError(f"recipe file {path}: expected a mapping at the top level")
    known = {"recipe", "transforms", "weights", "inputs", "overrides", "kernel"}
    unknown = set(data) - known
    if unknown:
        key = sorted(unknown)[0]
        raise ActlabError(f"recipe file {path}: unknown key {key!r}{did_you_mean(key, known)}")
    if "recipe" in data:
        return str(data["recipe"])
    stages = []
    for t in data.get("transforms") or []:
        if isinstance(t, str):
            stages.append(t)
        elif isinstance(t, dict) and len(t) == 1:
            (name, args), = t.items()
            stages.append(f"{name}({','.join(f'{k}={v}' for k, v in (args or {}).items())})")
        else:
            raise ActlabError(f"recipe file {path}: transform {t!r} must be a name or {{name: {{arg: value}}}}")
    terms = []
    for side, key in (("w", "weights"), ("a", "inputs")):
        if data.get(key):
            terms.append(f"{side}{data[key]}")
    for pattern, sides in (data.get("overrides") or {}).items():
        for side, key in (("w", "weights"), ("a", "inputs")):
            if key in (sides or {}):
                terms.append(f"{side}{sides[key] or 'fp'}@{pattern}")
    if data.get("kernel"):
        terms.append(f"kernel={data['kernel']}")
    if terms:
        stages.append(" ".join(terms))
    return " | ".join(stages)
