"""`actlab record`, `actlab stats`, `actlab verify`: the activation store from the terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.table import Table


def register(app: typer.Typer, out, err, load) -> None:
    """Add the store commands to the `actlab` app."""

    @app.command()
    def record(model: Annotated[str, typer.Argument(help="model reference, as for `actlab ppl`")],
               corpus: Annotated[str, typer.Option(help="austen[:split], a file or folder, hf:NAME")] = "austen:train",
               sites: Annotated[str, typer.Option(help="site pattern(s), comma separated")] = "blocks.*.resid_post",
               tokens: Annotated[Optional[int], typer.Option(min=1, help="tokens to harvest (default: all)")] = None,
               out_dir: Annotated[Path, typer.Option("--out", help="the store folder (.zarr)")] = Path("acts.zarr"),
               seq_len: Annotated[int, typer.Option(min=2)] = 512,
               batch_size: Annotated[int, typer.Option(min=1)] = 8,
               dtype: Annotated[str, typer.Option(help="float32, float16, bfloat16 or int8")] = "float16",
               chunk_windows: Annotated[Optional[int], typer.Option(min=1)] = None,
               covariance: Annotated[bool, typer.Option(help="also collect per-site covariance")] = False,
               compression: Annotated[Optional[str], typer.Option(help="zstd or none")] = None,
               resume: Annotated[bool, typer.Option(help="continue an interrupted harvest")] = False,
               overwrite: bool = False,
               engine: Annotated[str, typer.Option(help="local or ray")] = "local",
               workers: Annotated[int, typer.Option(min=1, help="ray: model actors")] = 2,
               ray_address: Annotated[Optional[str], typer.Option(help="ray: a cluster address (default: local)")] = None,
               model_dtype: Annotated[str, typer.Option(help="dtype the model runs in")] = "float32") -> None:
        """Harvest activations of SITES over a corpus into a Zarr store, with streaming statistics."""
        import actlab as al

        lab = load(model, model_dtype)
        store = al.harvest(lab, corpus, sites, out_dir, tokens=tokens, seq_len=seq_len, batch_size=batch_size,
                           dtype=dtype, chunk_windows=chunk_windows, covariance=covariance,
                           compression=None if compression in (None, "none") else compression, resume=resume,
                           overwrite=overwrite, engine=engine, workers=workers,
                           ray_address=ray_address)
        err.print(repr(store), markup=False)

    @app.command()
    def stats(store: Annotated[Path, typer.Argument(help="a store folder")],
              site: Annotated[Optional[str], typer.Argument(help="one site: per-channel detail")] = None,
              top: Annotated[int, typer.Option(min=1)] = 5, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
        """Statistics computed while recording: per-site summary, or one site's outlier channels."""
        import actlab as al

        s = al.open_store(store)
        chosen = [site] if site else s.sites
        for name in chosen:
            s[name]  # an unknown site is an error naming the closest ones
        rows = {name: summary(s.stats[name], top) for name in chosen}
        if as_json:
            print(json.dumps({"store": str(store), "codec": s.manifest.codec, "tokens": s.n_tokens, "sites": rows}))
            return
        table = Table(title=f"{s.root.name}: {s.n_tokens:,} tokens, {s.manifest.codec}")
        for col in ("site", "absmax", "median", "kurt.", "top channels", "codec err"):
            text = col in ("site", "top channels")
            table.add_column(col, justify="left" if text else "right", no_wrap=not text)
        for name, r in rows.items():
            top_text = " ".join(f"{c}:{v:.3g}" for c, v in r["top_channels"][:2])
            table.add_row(name, f"{r['absmax']:.4g}", f"{r['median_channel_absmax']:.3g}", f"{r['max_kurtosis']:.3g}",
                          top_text, f"{r['codec_relative_error']:.2%}")
        table.caption = "median: median channel absmax; kurt.: largest channel kurtosis; codec err: relative RMS"
        out.print(table)

    @app.command()
    def verify(store: Annotated[Path, typer.Argument(help="a store folder")]) -> None:
        """Check that a store is complete and every chunk matches its checksum (exit 1 if not)."""
        import actlab as al

        report = al.open_store(store).verify()
        for name, chunk in report.damaged:
            err.print(f"damaged: {name} chunk {chunk}", markup=False)
        for name, chunk in report.missing:
            err.print(f"missing checksum: {name} chunk {chunk}", markup=False)
        state = "complete" if report.complete else "incomplete (resume the harvest)"
        out.print(f"{store}: {report.chunks} chunks checked, {state}, "
                  f"{len(report.damaged)} damaged, {len(report.missing)} missing", markup=False)
        if not report.ok:
            sys.exit(1)


def summary(st, top: int) -> dict:
    """A JSON-able summary of one site's statistics."""
    absmax = st.absmax
    order = np.argsort(-absmax)[:top]
    return {"n": st.n, "absmax": float(absmax.max()), "median_channel_absmax": float(np.median(absmax)),
            "top_channels": [(int(c), float(absmax[c])) for c in order],
            "mean_abs_mean": float(np.abs(st.mean).mean()), "mean_std": float(st.std.mean()),
            "max_kurtosis": float(st.kurtosis.max()), "norm_median": st.norm_quantile(0.5),
            "abs_p99": st.abs_quantile(0.99), "codec_relative_error": st.codec_relative_error}
