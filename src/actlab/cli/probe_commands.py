"""`actlab probe MODEL --statements capitals`: a truth-probe sweep over sites from the terminal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from actlab.errors import ActlabError


def register(app: typer.Typer, out, err, load) -> None:
    """Add `actlab probe ...` to the app."""

    @app.command()
    def probe(model: Annotated[str, typer.Argument(help="model reference")],
              statements: Annotated[str, typer.Option(help="capitals, continents, currencies, cities, "
                                                           "a comma list or all")] = "capitals",
              sites: Annotated[str, typer.Option(help="site pattern(s) to sweep")] = "blocks.*.resid_post",
              kind: Annotated[str, typer.Option("--probe", help="linear, diffmean or lda")] = "linear",
              neither: Annotated[bool, typer.Option(
                  "--neither/--no-neither", help="count neither statements as not-true (default: drop them)")] = False,
              test_fraction: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.25,
              seed: Annotated[int, typer.Option()] = 0,
              batch_size: Annotated[int, typer.Option(min=1)] = 32,
              save: Annotated[Optional[Path], typer.Option(help="save the best site's probe to this folder")] = None,
              export_steering: Annotated[Optional[Path], typer.Option(
                  help="write the best probe's direction as a steering-vector folder")] = None,
              dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16")] = "float32",
              as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False) -> None:
        """Fit a truth probe at every site on entity-disjoint splits; print held-out accuracy, AUROC, calibration."""
        from actlab.data.statements import statements as make_statements
        from actlab.read.probes import PROBES, ProbeSweep

        if kind not in PROBES:
            raise ActlabError(f"unknown probe {kind!r}: use {', '.join(PROBES)}")
        facts = make_statements(statements)
        lab = load(model, dtype)
        negatives = ("false", "neither") if neither else ("false",)
        sweep = ProbeSweep(PROBES[kind](), test_fraction=test_fraction, negatives=negatives, seed=seed,
                           batch_size=batch_size).fit(lab, facts, sites=sites)
        if save is not None:
            sweep.best_probe.save(save)
        if export_steering is not None:
            sweep.best_probe.to_steering_vector(export_steering)
        if as_json:
            print(json.dumps(sweep.table().to_dict()))
            return
        out.print(sweep.table())
        best = sweep.table().best
        out.print(f"best site (validation accuracy): {sweep.best_site}: held-out accuracy {best['accuracy']:.3f}, "
                  f"AUROC {best['auroc']:.3f}", markup=False)
        for path, what in ((save, "probe"), (export_steering, "steering vector")):
            if path is not None:
                err.print(f"{what} → {path}", markup=False)
