"""`actlab lens` (logit lens, latent language) and `actlab voids` (LAC layer voids) from the terminal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from actlab.errors import ActlabError

TargetOpt = Annotated[Optional[str], typer.Option(help="a token (its first token) or token id to track")]
PositionsOpt = Annotated[bool, typer.Option("--all-positions", help="every token, not only the last")]
LatentOpt = Annotated[Optional[str], typer.Option(
    "--latent-language", help="translation pairs, e.g. fr:de,fr:zh: lens probability of each language")]
PlotOpt = Annotated[Optional[Path], typer.Option(help="write a PNG: heatmap, or curves with --latent-language")]
ModeOpt = Annotated[str, typer.Option(help="skip (void blocks leave the residual unchanged), exit (the reference "
                                           "code's per-token early exit) or trace")]
PromptsOpt = Annotated[Optional[list[str]], typer.Option("--prompt", help="prompt for the generation phase (repeat)")]
GENERATION_PROMPTS = ["The capital of France is", "Once upon a time, a young girl", "The best way to learn is"]


def _target(value: Optional[str]):
    return int(value) if value is not None and value.isdigit() else value


def _pairs(spec: str) -> list[tuple[str, str]]:
    pairs = []
    for item in spec.split(","):
        source, sep, target = item.strip().partition(":")
        if not sep or not source or not target:
            raise ActlabError(f"--latent-language takes pairs like fr:de,fr:zh, not {spec!r}")
        pairs.append((source, target))
    return pairs


def register(app: typer.Typer, out, err, load) -> None:
    """Add `actlab lens` and `actlab voids` to the app."""

    @app.command()
    def lens(model: Annotated[str, typer.Argument(help="model reference")],
             prompt: Annotated[Optional[str], typer.Option(help="the prompt to read")] = None,
             target: TargetOpt = None,
             top: Annotated[int, typer.Option(min=1, help="top tokens per layer")] = 5,
             all_positions: PositionsOpt = False,
             latent_language: LatentOpt = None,
             plot: PlotOpt = None,
             dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16")] = "float32",
             as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False) -> None:
        """Logit lens: decode every layer's residual stream through the final norm and the unembedding."""
        from actlab.read.languages import latent_language as run_latent
        from actlab.read.lens import LogitLens

        if (prompt is None) == (latent_language is None):
            raise ActlabError("give either --prompt or --latent-language")
        pairs = _pairs(latent_language) if latent_language is not None else []
        lab = load(model, dtype)
        if pairs:
            result = run_latent(lab, pairs, progress=not as_json)
            if plot is not None:
                result.plot(plot)
        else:
            result = LogitLens(top_k=top, positions="all" if all_positions else "last",
                               progress=not as_json).run(lab, prompt, target=_target(target))
            if plot is not None:
                result.heatmap(plot)
        print(result.to_json()) if as_json else out.print(result)
        if plot is not None:
            err.print(f"plot → {plot}", markup=False)

    @app.command()
    def voids(model: Annotated[str, typer.Argument(help="model reference")],
              corpus: Annotated[str, typer.Option(help="corpus for perplexity with voids skipped")] = "austen:test",
              max_tokens: Annotated[int, typer.Option(min=2, help="corpus tokens")] = 4096,
              seq_len: Annotated[int, typer.Option(min=2)] = 512,
              threshold: Annotated[float, typer.Option(help="LAC alpha: a block is a void when its norm change is "
                                                            "below alpha × the range of the earlier changes")] = 0.8,
              mode: ModeOpt = "skip",
              prompt: PromptsOpt = None,
              max_new_tokens: Annotated[int, typer.Option(min=2)] = 32,
              dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16")] = "float32",
              as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False) -> None:
        """Layer voids (LAC): active blocks per layer in prefill and generation; perplexity with voids skipped."""
        import actlab as al
        from actlab.read.voids import LayerVoids, layer_voids

        on_corpus = LayerVoids(threshold, mode)  # checks the options before the model loads
        lab = load(model, dtype)
        generation = layer_voids(lab, prompt or GENERATION_PROMPTS, threshold, mode, max_new_tokens)
        plain = al.eval.perplexity(lab, corpus, seq_len=seq_len, max_tokens=max_tokens, progress=not as_json)
        skipped = al.eval.perplexity(lab, corpus, seq_len=seq_len, max_tokens=max_tokens, edits=on_corpus,
                                     progress=not as_json)
        corpus_voids = on_corpus.result(lab)
        report = {"kind": "layer_voids_report", "alpha": threshold, "mode": mode,
                  "perplexity": {"plain": plain.ppl, "voids": skipped.ppl, "ratio": skipped.ppl / plain.ppl,
                                 "protocol": plain.protocol},
                  "corpus": corpus_voids.to_dict(), "generation": generation.to_dict()}
        if as_json:
            print(json.dumps(report, indent=2))
            return
        out.print(generation)
        out.print(f"corpus {corpus} ({corpus_voids.prefill.tokens:,} tokens): layers used "
                  f"{corpus_voids.prefill.fraction_used:.3f}; perplexity {plain.ppl:.3f} → {skipped.ppl:.3f} "
                  f"({100 * (skipped.ppl / plain.ppl - 1):+.1f} %, mode {mode})", markup=False)
