"""`actlab sparsity` (PPL-p% activation sparsity) and `actlab relation-neurons` from the terminal."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from actlab.errors import ActlabError

RELATIONS = "capital,continent,currency,city_country"


def register(app: typer.Typer, out, err, load) -> None:
    """Add `actlab sparsity` and `actlab relation-neurons` to the app."""

    @app.command("sparsity")
    def sparsity(model: Annotated[str, typer.Argument(help="model reference")],
                 p: Annotated[float, typer.Option("--p", help="allowed perplexity rise in % (PPL-p%)")] = 1.0,
                 corpus: Annotated[str, typer.Option(help="austen[:split], a .txt/.jsonl file or folder, hf:NAME")] = "austen:test",
                 seq_len: Annotated[int, typer.Option("--seq-len", min=2)] = 512,
                 max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="tokens of the corpus")] = 8192,
                 calibration_tokens: Annotated[int, typer.Option("--calibration-tokens", min=1,
                                                                 help="tokens the thresholds are fitted on")] = 2048,
                 tolerance: Annotated[float, typer.Option(help="width of the final CETT bracket")] = 0.002,
                 batch_size: Annotated[int, typer.Option(min=1)] = 4,
                 dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16")] = "float32",
                 as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False) -> None:
        """PPL-p% sparsity (Sparsing Law, arXiv 2411.02335): the activation ratio of the MLP neurons at the
        largest CETT whose truncation raises perplexity by at most p %."""
        from actlab.read.sparsity import ppl_sparsity

        if not p > 0:
            raise ActlabError(f"--p must be positive (a perplexity rise in %), got {p}")
        lab = load(model, dtype)
        result = ppl_sparsity(lab, corpus, p, seq_len=seq_len, max_tokens=max_tokens,
                              calibration_tokens=calibration_tokens, tolerance=tolerance, batch_size=batch_size,
                              progress=not as_json)
        if as_json:
            print(result.to_json())
        else:
            out.print(result)
            out.print(result.table())

    @app.command("relation-neurons")
    def relation_neurons(model: Annotated[str, typer.Argument(help="model reference")],
                         relations: Annotated[str, typer.Option(help="comma-separated relations of al.data.facts")] = RELATIONS,
                         top: Annotated[int, typer.Option(min=1, help="neurons per relation")] = 200,
                         facts_per_relation: Annotated[Optional[int], typer.Option(
                             "--facts", min=2, help="facts per relation (default: all), split 3:1 into fit and test")] = None,
                         metric: Annotated[str, typer.Option(help="answer (greedy first token) or choice (4 options)")] = "answer",
                         control: Annotated[bool, typer.Option(help="also deactivate random neurons of the same count")] = True,
                         out_path: Annotated[Optional[Path], typer.Option("--out", help="save the neurons here")] = None,
                         batch_size: Annotated[int, typer.Option(min=1)] = 16,
                         dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16")] = "float32",
                         as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False) -> None:
        """Relation-specific neurons (arXiv 2502.17355): find them by AP on the fit split, then deactivate
        each relation's neurons and measure accuracy on every relation's test facts."""
        import actlab as al
        from actlab.read.neurons import METRICS, RelationNeurons, relation_ablation

        names = [r.strip() for r in relations.split(",") if r.strip()]
        if len(names) < 2:
            raise ActlabError("--relations needs at least two relations (the others are the negatives)")
        if metric not in METRICS:
            raise ActlabError(f"unknown metric {metric!r}: use {', '.join(METRICS)}")
        facts = {r: al.data.facts(r) for r in names}
        if facts_per_relation is not None:
            facts = {r: f.sample(facts_per_relation) for r, f in facts.items()}
        lab = load(model, dtype)
        found = RelationNeurons(top=top, batch_size=batch_size, progress=not as_json).fit(
            lab, {r: f.split("train") for r, f in facts.items()})
        if out_path is not None:
            found.save(out_path)
            err.print(f"{found!r} → {out_path}", markup=False)
        result = relation_ablation(lab, found, {r: f.split("test") for r, f in facts.items()}, metric=metric,
                                   control=control, batch_size=batch_size, progress=not as_json)
        if as_json:
            print(result.to_json())
        else:
            out.print(result)
            out.print(result.table())
