"""`actlab quant eval|compare|sensitivity`: quantization recipes from the terminal."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

CorpusOpt = Annotated[str, typer.Option(help="evaluation corpus spec")]
CalibOpt = Annotated[str, typer.Option("--calibration", help="calibration corpus spec")]
SamplesOpt = Annotated[int, typer.Option(min=1, help="calibration windows")]
SeqOpt = Annotated[int, typer.Option("--seq-len", min=2)]
TokensOpt = Annotated[int, typer.Option("--max-tokens", min=1, help="evaluation tokens")]
KlOpt = Annotated[int, typer.Option("--kl-tokens", min=0, help="tokens for KL and top-1 (0: skip)")]


def register(app: typer.Typer, out, err, load) -> None:
    """Add `actlab quant ...` to the app."""
    quant = typer.Typer(no_args_is_help=True, help="Calibrate, evaluate and compare quantization recipes.")
    app.add_typer(quant, name="quant")

    def _compare(model, recipes, corpus, calibration, samples, seq_len, max_tokens, kl_tokens, as_json, diagnostics):
        from actlab.compress import Recipe, compare

        for r in recipes:  # a bad recipe fails before the model loads
            Recipe.parse(r)
        lab = load(model, "float32")
        result = compare(lab, recipes, corpus, seq_len, max_tokens, calibration=calibration, samples=samples,
                         kl_tokens=kl_tokens, progress=not as_json)
        if as_json:
            print(result.to_json())
        else:
            out.print(result.table())
        if diagnostics:
            qlab = Recipe.parse(recipes[-1]).calibrate(lab, calibration, samples, seq_len, progress=not as_json,
                                                       diagnostics=True)
            _print_layers(out, qlab.quantization.layers, as_json)

    @quant.command("eval")
    def eval_(model: Annotated[str, typer.Argument(help="model reference")],
              recipe: Annotated[str, typer.Option(help='recipe string or .yaml/.toml file, e.g. "smoothquant | w8a8"')],
              corpus: CorpusOpt = "austen:test", calibration: CalibOpt = "austen:train", samples: SamplesOpt = 64,
              seq_len: SeqOpt = 512, max_tokens: TokensOpt = 16384, kl_tokens: KlOpt = 4096,
              diagnostics: Annotated[bool, typer.Option(help="also print per-layer diagnostics")] = False,
              as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
        """Calibrate one recipe and compare it with the float model."""
        _compare(model, ["fp", recipe], corpus, calibration, samples, seq_len, max_tokens, kl_tokens, as_json, diagnostics)

    @quant.command("compare")
    def compare_(model: Annotated[str, typer.Argument(help="model reference")],
                 recipes: Annotated[list[str], typer.Option("--recipes", help="recipes (repeat or list after it)")],
                 corpus: CorpusOpt = "austen:test", calibration: CalibOpt = "austen:train", samples: SamplesOpt = 64,
                 seq_len: SeqOpt = 512, max_tokens: TokensOpt = 16384, kl_tokens: KlOpt = 4096,
                 as_json: Annotated[bool, typer.Option("--json")] = False,
                 extra: Annotated[Optional[list[str]], typer.Argument(help="more recipes", show_default=False)] = None) -> None:
        """Every recipe on the same windows: recipe, bits, PPL, ΔPPL %, KL, top-1, calibration time."""
        _compare(model, [*recipes, *(extra or [])], corpus, calibration, samples, seq_len, max_tokens, kl_tokens,
                 as_json, False)


    @quant.command("sensitivity")
    def sensitivity_(model: Annotated[str, typer.Argument(help="model reference")],
                     recipe: Annotated[str, typer.Option(help="recipe with a w/a quantization stage")] = "w6a6",
                     unit: Annotated[str, typer.Option(help="layer (decoder block) or linear")] = "layer",
                     metric: Annotated[str, typer.Option(help="rank units by kl or ppl")] = "kl",
                     a8: Annotated[Optional[int], typer.Option("--a8", min=0, help="plan: 8-bit inputs on the K most "
                                                               "sensitive units")] = None,
                     corpus: CorpusOpt = "austen:test", calibration: CalibOpt = "austen:train",
                     samples: SamplesOpt = 32, seq_len: SeqOpt = 512, max_tokens: TokensOpt = 4096,
                     as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
        """Quantize one unit at a time (FlexQ, arXiv 2508.04405): KL and ΔPPL per unit, and a plan."""
        from actlab.compress import Recipe, sensitivity
        from actlab.compress.sensitivity import check_options

        check_options(Recipe.parse(recipe), unit, metric)  # bad input fails before the model loads
        lab = load(model, "float32")
        result = sensitivity(lab, recipe, unit, metric, corpus, seq_len, max_tokens, calibration=calibration,
                             samples=samples, progress=not as_json)
        plan = result.plan(a8=a8) if a8 is not None else None
        if as_json:
            print(json.dumps({**result.to_dict(), "plan": plan}, indent=2))
            return
        out.print(result.table())
        if plan is not None:
            out.print(f"plan: {plan}", markup=False, highlight=False, soft_wrap=True)


def _print_layers(out, layers: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(layers, indent=2))
        return
    from rich.table import Table

    t = Table(title="per-layer diagnostics (worst 20 by output error)")
    for col in ("group", "outlier ch.", "kurtosis before → after", "kernel %", "rel. MSE", "folded"):
        t.add_column(col)
    for r in sorted(layers, key=lambda r: -r["rel_mse"])[:20]:
        t.add_row(r["group"], ",".join(map(str, r["outlier_channels"])) or "—",
                  f"{r['kurtosis_before']:.1f} → {r['kurtosis_after']:.1f}", f"{r['kernel_pct']:.1f}",
                  f"{r['rel_mse']:.2e}", " ".join(r["folded"]) or "—")
    out.print(t)
