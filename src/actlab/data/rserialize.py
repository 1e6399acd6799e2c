"""A small reader for R's XDR serialization format ("X\\n", version 2 or 3).

It covers what R data packages hold: character, logical, integer, double and list vectors,
pairlists (used for attributes), symbols and back-references. Enough to read the lazy-load
database (`Rdata.rdb` / `Rdata.rdx`) of a data-only package without R.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actlab.errors import ActlabError

NILSXP, SYMSXP, LISTSXP, LANGSXP, CHARSXP = 0, 1, 2, 6, 9
LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP, EXPRSXP = 10, 13, 14, 16, 19, 20
REFSXP, NILVALUE_SXP = 255, 254
_SPECIAL_NONE = {253, 252, 251, 250, 242, 241}  # global env, unbound, missing arg, base ns, envs
NA_INTEGER = -(2**31)
_LATIN1_MASK = 1 << 2  # CHARSXP "levels" bit: the bytes are Latin-1, not UTF-8


@dataclass
class RSymbol:
    """An R symbol (a name)."""

    name: str


@dataclass
class RVector:
    """An R vector with attributes (names, class, ...) kept beside its values."""

    values: list[Any]
    attributes: dict[str, Any] = field(default_factory=dict)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.refs: list[Any] = []

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ActlabError("truncated R serialization stream")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two more ints, upper and lower half
            upper, lower = struct.unpack(">II", self.take(8))
            n = (upper << 32) + lower
        return n

    def header(self) -> None:
        if self.take(2) != b"X\n":
            raise ActlabError("not an R XDR serialization (expected 'X\\n')")
        version = self.int()
        self.int()  # writer's R version
        self.int()  # minimal reader version
        if version == 3:
            self.take(self.int())  # native encoding, e.g. "UTF-8"
        elif version != 2:
            raise ActlabError(f"unsupported R serialization version {version}")

    def item(self) -> Any:
        flags = self.int()
        kind = flags & 0xFF
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == NILVALUE_SXP or kind in _SPECIAL_NONE:
            return None
        if kind == REFSXP:
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind == SYMSXP:
            symbol = RSymbol(self.item())
            self.refs.append(symbol)
            return symbol
        if kind in (LISTSXP, LANGSXP):
            return self.pairlist(has_attr, has_tag)
        if kind == CHARSXP:
            n = self.int()
            if n == -1:
                return None
            latin1 = bool((flags >> 12) & _LATIN1_MASK)
            return self.take(n).decode("latin-1" if latin1 else "utf-8", errors="replace")
        if kind in (LGLSXP, INTSXP):
            n = self.length()
            values = [None if v == NA_INTEGER else v for v in struct.unpack(f">{n}i", self.take(4 * n))]
            if kind == LGLSXP:
                values = [None if v is None else bool(v) for v in values]
        elif kind == REALSXP:
            n = self.length()
            values = list(struct.unpack(f">{n}d", self.take(8 * n)))
        elif kind in (STRSXP, VECSXP, EXPRSXP):
            values = [self.item() for _ in range(self.length())]
        else:
            raise ActlabError(f"R serialization: unsupported SEXP type {kind}")
        attributes = self.attributes() if has_attr else {}
        return RVector(values, attributes)

    def pairlist(self, has_attr: bool, has_tag: bool) -> dict[str, Any]:
        """A pairlist as an ordered dict tag -> value (untagged cells get their index)."""
        out: dict[str, Any] = {}
        while True:
            if has_attr:
                self.attributes()
            tag = self.item() if has_tag else None
            key = tag.name if isinstance(tag, RSymbol) else str(len(out))
            out[key] = self.item()
            flags = self.int()
            kind = flags & 0xFF
            if kind not in (LISTSXP, LANGSXP):
                self.pos -= 4
                self.item()  # the terminating NULL (or an odd non-list CDR, discarded)
                return out
            has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))

    def attributes(self) -> dict[str, Any]:
        attrs = self.item()
        return attrs if isinstance(attrs, dict) else {}


def unserialize(data: bytes) -> Any:
    """Decode one R-serialized object (XDR format) into Python values."""
    reader = _Reader(data)
    reader.header()
    return reader.item()


def _decompress_record(blob: bytes) -> bytes:
    """A lazy-load record: 4-byte big-endian uncompressed length, then the compressed stream."""
    size = struct.unpack(">I", blob[:4])[0]
    body = blob[4:]
    if body[:1] == b"Z":  # xz (compress=3)
        out = lzma.decompress(body[1:])
    elif body[:1] == b"2":  # bzip2 (compress=2)
        out = bz2.decompress(body[1:])
    elif body[:1] == b"0":  # stored uncompressed
        out = body[1:]
    else:  # zlib (compress=TRUE)
        out = zlib.decompress(body)
    if len(out) != size:
        raise ActlabError(f"R lazy-load record: expected {size} bytes, got {len(out)}")
    return out


def read_lazyload(rdb: Path, rdx: Path) -> dict[str, Any]:
    """All variables of an R lazy-load database (`*.rdb` + its `*.rdx` index), by name."""
    raw = rdx.read_bytes()
    index = unserialize(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else _decompress_record(raw))
    top = dict(zip(index.attributes["names"].values, index.values))
    variables: RVector = top["variables"]
    names = variables.attributes["names"].values
    data = rdb.read_bytes()
    out: dict[str, Any] = {}
    for name, where in zip(names, variables.values):
        offset, length = where.values
        out[name] = unserialize(_decompress_record(data[offset : offset + length]))
    return out
