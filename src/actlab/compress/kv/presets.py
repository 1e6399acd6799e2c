"""KV-cache methods by name, as the CLI and `kv_compare` take them: `kv16`, `pertoken4`,
`kivi2`, `kvquant3`, `xquant4`, `xquant-cl2`, optionally with arguments: `kvquant3(outliers=0)`."""

from __future__ import annotations

import dataclasses
import re

from actlab.compress.kv.methods import KVQuant
from actlab.compress.kv.xquant import XQuant
from actlab.compress.recipe import literal
from actlab.errors import ActlabError, did_you_mean


def _kvquant(bits: int) -> dict:
    return dict(bits=bits, pre_rope=True, nonuniform=True, outliers=0.01, sinks=1, qnorm=bits <= 2)


PRESETS = {
    "kv": lambda b: (KVQuant, dict(bits=b, pre_rope=False)),  # kv16: the float16 cache
    "pertoken": lambda b: (KVQuant, dict(bits=b, keys="per_token", pre_rope=False)),
    "kivi": lambda b: (KVQuant, dict(bits=b, key_group=32, value_group=32, pre_rope=False, residual=32)),
    "kvquant": lambda b: (KVQuant, _kvquant(b)),
    "xquant": lambda b: (XQuant, dict(bits=b)),
    "xquant-cl": lambda b: (XQuant, dict(bits=b, cross_layer=True)),
}
_NAME = re.compile(r"^([a-z][a-z\-]*?)(\d+)\s*(?:\((.*)\))?$")


def kv_method(spec: str):
    """A KV-cache method from its name (see the module docstring); arguments override the preset."""
    m = _NAME.match(spec.strip().lower())
    if not m or m.group(1) not in PRESETS:
        head = m.group(1) if m else spec
        raise ActlabError(f"unknown KV method {spec!r}{did_you_mean(head, PRESETS)}; "
                          f"methods: {', '.join(p + '<bits>' for p in PRESETS)} (e.g. kvquant3, kivi2, kv16)")
    family, bits, args = m.group(1), int(m.group(2)), m.group(3)
    cls, kwargs = PRESETS[family](bits)
    names = {f.name for f in dataclasses.fields(cls)} - {"layers", "name", "fitted_on"}
    for item in filter(None, (a.strip() for a in (args or "").split(","))):
        key, _, value = (s.strip() for s in item.partition("="))
        if key not in names or not value:
            raise ActlabError(f"{spec!r}: argument {item!r} must be one of {', '.join(sorted(names))} as name=value")
        kwargs[key] = literal(value)
    return cls(**kwargs, name=spec.strip())
