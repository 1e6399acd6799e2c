"""`actlab similarity STORE_A STORE_B` and `actlab aqi MODEL`: representation similarity of two
activation stores, and cluster quality (AQI) of two prompt sets."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from actlab.errors import ActlabError


def _sites(value: Optional[str]) -> Optional[list[str]]:
    return None if value is None else [s.strip() for s in value.split(",") if s.strip()]


def register(app: typer.Typer, out, err, load) -> None:
    """Add `actlab similarity` and `actlab aqi` to the app."""

    @app.command()
    def similarity(store_a: Annotated[str, typer.Argument(help="first activation store (a harvest folder)")],
                   store_b: Annotated[str, typer.Argument(help="second store, holding the same tokens")],
                   sites: Annotated[Optional[str], typer.Option(help="sites of A: comma-separated names or globs "
                                                                     "(default: all)")] = None,
                   sites_b: Annotated[Optional[str], typer.Option(help="sites of B (default: the same as A)")] = None,
                   metric: Annotated[list[str], typer.Option(
                       help="cka, svcca or relative (repeat for several)")] = ["cka"],  # noqa: B006
                   max_tokens: Annotated[Optional[int], typer.Option(help="compare the first N tokens")] = None,
                   keep: Annotated[float, typer.Option(help="SVCCA: share of variance kept per side")] = 0.99,
                   anchors: Annotated[int, typer.Option(help="relative: number of anchor tokens")] = 256,
                   skip_positions: Annotated[int, typer.Option(
                       help="leave out the first N tokens of every window (attention sinks)")] = 0,
                   as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False) -> None:
        """Compare every site of STORE_A with every site of STORE_B (linear CKA, SVCCA, relative representations)."""
        from actlab.read.similarity import compare_stores
        from actlab.store import open_store

        result = compare_stores(open_store(store_a), open_store(store_b), sites=_sites(sites), sites_b=_sites(sites_b),
                                metrics=metric, max_tokens=max_tokens, keep=keep, anchors=anchors,
                                skip_positions=skip_positions, progress=not as_json)
        if as_json:
            print(result.to_json())
            return
        for table in result.tables():
            out.print(table)

    @app.command("aqi")
    def aqi_command(model: Annotated[str, typer.Argument(help="model reference")],
                    pairs: Annotated[str, typer.Option(help="contrastive prompt set: refusal, sentiment, truth or a "
                                                            ".jsonl; append :train or :test for a split")] = "refusal",
                    sites: Annotated[str, typer.Option(help="site pattern(s)")] = "blocks.*.resid_post",
                    gamma: Annotated[float, typer.Option(help="weight of the first index in AQI")] = 0.5,
                    pool: Annotated[bool, typer.Option(help="also score the learned layer pool")] = True,
                    batch_size: Annotated[int, typer.Option(min=1)] = 16,
                    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16")] = "float32",
                    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False) -> None:
        """Cluster quality (Davies–Bouldin, Dunn, Xie–Beni, Calinski–Harabasz, AQI) of two prompt sets per layer."""
        import actlab as al
        from actlab.read.clusters import aqi

        name, _, split = pairs.partition(":")
        data = al.data.prompts(name, split=split or None)
        if not isinstance(data, al.data.ContrastivePairs):
            raise ActlabError(f"AQI needs two prompt sets (contrastive pairs such as refusal), not the list {pairs!r}")
        result = aqi(load(model, dtype), data, sites=sites, gamma=gamma, pool=pool, batch_size=batch_size,
                     progress=not as_json)
        if as_json:
            print(result.to_json())
            return
        out.print(result)
        best = result.best
        out.print(f"best layer: {best['site']} (AQI {best['aqi']:.4f})", markup=False)
