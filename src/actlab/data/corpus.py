"""Text corpora: one `Corpus` object for the built-in `austen`, local files and HF datasets.

Accepted specs:
- `austen`, `austen:SPLIT` (SPLIT in train / test / all; default all)
- a path to a `.txt` file (one document), a `.jsonl` file (one document per line, field
  `text`), or a folder (every .txt / .jsonl inside, recursively, sorted by path)
- `hf:NAME`, `hf:NAME/CONFIG`, `hf:ORG/NAME/CONFIG`, each optionally `:SPLIT` (default
  test): a HuggingFace dataset, one document per row, field `text`
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actlab.errors import ActlabError

ACCEPTED = "'austen[:train|test|all]', a .txt or .jsonl file, a folder of them, or 'hf:NAME[/CONFIG][:SPLIT]'"


@dataclass
class Corpus:
    """A named list of documents; `text()` joins them with a blank line."""

    name: str
    split: str | None
    documents: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """All documents joined with "\\n\\n" (the evaluation stream)."""
        return "\n\n".join(self.documents)

    def __len__(self) -> int:
        return len(self.documents)

    def __repr__(self) -> str:
        chars = sum(len(d) for d in self.documents) + 2 * max(len(self.documents) - 1, 0)
        split = f":{self.split}" if self.split else ""
        return f"Corpus({self.name}{split}, {len(self.documents)} documents, {chars:,} chars)"

    def describe(self) -> dict[str, Any]:
        """What a result records about its corpus: name, split, sizes and a text hash."""
        text = self.text()
        return {
            "corpus": self.name,
            "split": self.split,
            "documents": len(self.documents),
            "chars": len(text),
            "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16],
        }


def corpus(spec: str | Path | Corpus, split: str | None = None) -> Corpus:
    """Load a corpus from a spec (see the module docstring); a `Corpus` passes through."""
    if isinstance(spec, Corpus):
        return spec
    text = str(spec)
    name, _, suffix = text.partition(":")
    if name == "austen":
        return _austen(_pick_split(suffix, split, "all"))
    if name == "hf" and suffix:
        return _hf(suffix, split)
    path = Path(text).expanduser()
    if path.is_dir():
        return _folder(path, split)
    if path.is_file() and path.suffix in (".txt", ".jsonl"):
        return _file(path, split)
    if path.is_file():
        raise ActlabError(f"corpus file '{path}' is neither .txt nor .jsonl")
    raise ActlabError(f"unknown corpus '{text}': use {ACCEPTED}")


def _pick_split(in_spec: str, argument: str | None, default: str) -> str:
    if in_spec and argument and in_spec != argument:
        raise ActlabError(f"two splits given: '{in_spec}' in the spec and split='{argument}'")
    return in_spec or argument or default


def _austen(split: str) -> Corpus:
    from actlab.data.austen import load_austen

    documents, provenance = load_austen(split)
    return Corpus("austen", split, documents, provenance)


def _no_split(path: Path, split: str | None) -> None:
    if split is not None:
        raise ActlabError(f"corpus '{path}' is a local file or folder and has no split '{split}'")


def _read_jsonl(path: Path) -> list[str]:
    documents = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ActlabError(f"{path}, line {number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ActlabError(f"{path}, line {number}: expected an object with a string field 'text'")
            documents.append(record["text"])
    return documents


def _read(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    return [path.read_text(encoding="utf-8")]


def _file(path: Path, split: str | None) -> Corpus:
    _no_split(path, split)
    return Corpus(path.name, None, _read(path), {"source": str(path.resolve())})


def _folder(path: Path, split: str | None) -> Corpus:
    _no_split(path, split)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl"))
    if not files:
        raise ActlabError(f"corpus folder '{path}' holds no .txt or .jsonl files")
    documents = [doc for f in files for doc in _read(f)]
    provenance = {"source": str(path.resolve()), "files": [str(f.relative_to(path)) for f in files]}
    return Corpus(path.name, None, documents, provenance)


def _hf(spec: str, split: str | None) -> Corpus:
    """`NAME[/CONFIG][:SPLIT]`; with two slashes the first part is the owner: ORG/NAME/CONFIG."""
    ident, _, in_spec = spec.partition(":")
    split = _pick_split(in_spec, split, "test")
    parts = ident.split("/")
    if len(parts) == 1:
        name, config = parts[0], None
    elif len(parts) == 2:
        name, config = parts
    elif len(parts) == 3:
        name, config = f"{parts[0]}/{parts[1]}", parts[2]
    else:
        raise ActlabError(f"bad HF dataset spec 'hf:{spec}': use hf:NAME, hf:NAME/CONFIG or hf:ORG/NAME/CONFIG")
    try:
        import datasets
    except ImportError as exc:
        raise ActlabError("HF datasets need the `datasets` package: pip install datasets") from exc
    try:
        rows = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # network, unknown dataset, unknown split: all user-facing
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ActlabError(f"could not load HF dataset '{ident}' split '{split}': {first}") from exc
    if "text" not in rows.column_names:
        raise ActlabError(f"HF dataset '{ident}' has no 'text' column (columns: {', '.join(rows.column_names)})")
    provenance = {"source": "huggingface", "dataset": name, "config": config, "split": split,
                  "fingerprint": getattr(rows, "_fingerprint", None)}
    return Corpus(f"hf:{ident}", split, list(rows["text"]), provenance)
