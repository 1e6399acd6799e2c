"""`harvest`: run a model over a corpus and write the activations of many sites to a Zarr store.

Windows follow the evaluation protocol (`actlab.data.token_windows`); the forward pass stops
after the deepest requested site; chunks of whole windows go to a background writer. A harvest
killed at any instant resumes (`resume=True`) from the last committed chunk and ends with the
same arrays and statistics as an uninterrupted run.
"""

from __future__ import annotations

import bisect
import shutil
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

import actlab
from actlab.data import Corpus, corpus as load_corpus, token_windows
from actlab.errors import ActlabError
from actlab.store.chunks import ChunkData, create_arrays
from actlab.store.codecs import check_codec
from actlab.store.manifest import MANIFEST, Manifest, load_manifest, save_manifest
from actlab.store.stats import SiteStats
from actlab.store.store import Store, load_stats
from actlab.store.writer import BackgroundWriter

CHUNK_TOKENS = 8192  # target tokens per chunk: ~9 MB of float16 for d_model 576


def tokenize_with_documents(tokenizer, corpus: Corpus) -> tuple[torch.Tensor, torch.Tensor]:
    """The corpus token stream (as the windowing protocol tokenizes it) and each token's document."""
    enc = tokenizer(corpus.text(), add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    starts, pos = [], 0
    for doc in corpus.documents:
        starts.append(pos)
        pos += len(doc) + 2  # documents are joined with "\n\n"
    docs = [bisect.bisect_right(starts, a) - 1 for a, _ in enc["offset_mapping"]]
    return torch.tensor(enc["input_ids"], dtype=torch.long), torch.tensor(docs, dtype=torch.int32)


def window_index(windows, stream_documents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Document id and in-window position of every token of every window: two `[n_windows, seq_len]`."""
    p = windows.protocol
    n, seq_len = windows.input_ids.shape
    span = seq_len - 1 if p["bos"] else seq_len
    take = torch.arange(n)[:, None] * p["stride"] + torch.arange(span)[None, :]
    documents = stream_documents[take]
    if p["bos"]:  # BOS belongs to the document of the token after it
        documents = torch.cat([documents[:, :1], documents], dim=1)
    positions = torch.arange(seq_len, dtype=torch.int32).expand(n, seq_len)
    return documents, positions


def _chunk_windows(batch_size: int, seq_len: int, chunk_windows: int | None) -> int:
    if chunk_windows is None:
        return batch_size * max(1, round(CHUNK_TOKENS / (seq_len * batch_size)))
    if chunk_windows % batch_size:
        raise ActlabError(f"chunk_windows ({chunk_windows}) must be a multiple of batch_size ({batch_size})")
    return chunk_windows


def plan(lab, corpus, sites, tokens, seq_len, batch_size, dtype, chunk_windows, covariance, compression):
    """Windows, document ids, positions and the manifest a harvest with these settings writes."""
    check_codec(dtype)
    if compression not in (None, "zstd"):
        raise ActlabError(f"compression must be None or 'zstd', not {compression!r}")
    if batch_size < 1:
        raise ActlabError(f"batch_size must be at least 1, got {batch_size}")
    chosen = lab.catalog.resolve(sites)
    variable = [s.name for s in chosen if None in s.shape]
    if variable:
        raise ActlabError(f"cannot store {variable[0]}: its shape varies with the sequence; record it in memory")
    corpus = load_corpus(corpus)
    stream, stream_documents = tokenize_with_documents(lab.tokenizer, corpus)
    windows = token_windows(lab.tokenizer, corpus, seq_len, max_tokens=tokens, stream=stream)
    documents, positions = window_index(windows, stream_documents)
    m = Manifest(actlab_version=actlab.__version__, model=lab.name, fingerprint=lab.fingerprint.to_dict(),
                 sites={s.name: list(s.shape) for s in chosen}, codec=dtype, compression=compression,
                 seq_len=seq_len, n_windows=len(windows), batch_size=batch_size,
                 chunk_windows=min(_chunk_windows(batch_size, seq_len, chunk_windows),
                                   -(-len(windows) // batch_size) * batch_size),  # edge chunks are stored whole
                 covariance=covariance,
                 corpus=windows.protocol)
    return windows, documents, positions, m


SAME_ON_RESUME = ("fingerprint", "sites", "codec", "compression", "seq_len", "n_windows", "chunk_windows",
                  "batch_size", "covariance", "corpus")


def _open_for_resume(root: Path, fresh: Manifest) -> Manifest:
    old = load_manifest(root)
    for key in SAME_ON_RESUME:
        if getattr(old, key) != getattr(fresh, key):
            raise ActlabError(f"cannot resume {root}: its {key} differs from this harvest's; "
                              "use the same settings or start a new store")
    return old


def harvest(lab, corpus, sites: str | list[str], out: str | Path, *, tokens: int | None = None, seq_len: int = 512,
            batch_size: int = 8, dtype: str = "float16", chunk_windows: int | None = None,
            covariance: bool = False, compression: str | None = None, resume: bool = False,
            overwrite: bool = False, engine: str = "local", workers: int = 2, ray_address: str | None = None,
            progress: bool = True) -> Store:
    """Record `sites` over `tokens` tokens of `corpus` into the Zarr store `out`; returns the store.

    `engine="ray"` spreads chunks over `workers` Ray actors (a local Ray, or `ray_address` of a
    cluster); the store is the same as the local engine's.
    """
    root = Path(out)
    windows, documents, positions, m = plan(lab, corpus, sites, tokens, seq_len, batch_size, dtype,
                                            chunk_windows, covariance, compression)
    if (root / MANIFEST).exists() and resume:
        m = _open_for_resume(root, m)
        stats = load_stats(root, m)
    else:
        if root.exists() and any(root.iterdir()):
            if not overwrite:
                raise ActlabError(f"{root} exists; pass resume=True (--resume) to continue it or overwrite=True")
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        create_arrays(root, m)
        save_manifest(root, m)
        stats = {s: SiteStats(int(torch.tensor(shape).prod()), covariance) for s, shape in m.sites.items()}
    if engine == "ray":
        from actlab.store.distributed import harvest_ray

        harvest_ray(lab, root, m, stats, windows, documents, positions, workers=workers, progress=progress,
                    address=ray_address)
    elif engine == "local":
        _harvest_local(lab, root, m, stats, windows, documents, positions, progress)
    else:
        raise ActlabError(f"engine must be 'local' or 'ray', not {engine!r}")
    return Store(root, lab)


def record_chunk(lab, m: Manifest, index: int, input_ids, documents, positions) -> ChunkData:
    """Run the model over the windows of chunk `index` and collect everything it writes."""
    lo, hi = index * m.chunk_windows, min((index + 1) * m.chunk_windows, m.n_windows)
    parts: dict[str, list[torch.Tensor]] = {s: [] for s in m.sites}
    for start in range(lo, hi, m.batch_size):
        ids = input_ids[start:min(start + m.batch_size, hi)]
        with lab.record(list(m.sites)) as rec:
            lab.forward(ids, return_logits=False)
        for s in m.sites:
            parts[s].append(rec[s])
    return ChunkData(index, input_ids[lo:hi].flatten(), documents[lo:hi].flatten(),
                     positions[lo:hi].flatten(), {s: torch.cat(v) for s, v in parts.items()})


def _harvest_local(lab, root, m, stats, windows, documents, positions, progress: bool) -> None:
    first = m.progress.windows_done // m.chunk_windows
    writer = BackgroundWriter(root, m, stats)
    columns = (TextColumn("harvest"), BarColumn(), MofNCompleteColumn(), TextColumn("chunks"), TimeRemainingColumn())
    try:
        with Progress(*columns, transient=True, disable=not progress) as bar:
            task = bar.add_task("harvest", total=m.n_chunks, completed=first)
            for index in range(first, m.n_chunks):
                writer.put(record_chunk(lab, m, index, windows.input_ids, documents, positions))
                bar.advance(task)
    finally:
        writer.close()
