"""`actlab steer train|generate|eval|search`: steering vectors from the terminal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from actlab.errors import ActlabError

METRICS = ("sentiment", "refusal", "none")
PromptsOpt = Annotated[Optional[str], typer.Option(
    "--prompts", help="prompt set for the metric: a built-in name[:train|test] or a .jsonl (default: the metric's own)")]


def _pairs(spec: str):
    import actlab as al

    name, _, split = spec.partition(":")
    return al.data.prompts(name, split=split or None)


def load_vector(path: str):
    """A saved `.steer` folder or a llama.cpp control-vector `.gguf`."""
    import actlab as al

    if str(path).endswith(".gguf"):
        return al.steer.SteeringVector.from_gguf(path)
    return al.steer.SteeringVector.load(path)


def _read(value: str):
    return int(value) if value.lstrip("-").isdigit() else value


def _tokens(value: str):
    if value in ("all", "prompt", "generated", "last"):
        return value
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise ActlabError(f"--tokens must be all, prompt, generated, last or comma-separated indices, not {value!r}") from None


def metric_for(name: str, prompts: Optional[str], max_new_tokens: int):
    """The behaviour metric `name` on its default prompt set (neutral stems / held-out harmful requests)."""
    import actlab as al

    if name not in METRICS:
        raise ActlabError(f"unknown metric {name!r}: use {', '.join(METRICS)}")
    if name == "none":
        return None
    texts = _pairs(prompts or ("neutral" if name == "sentiment" else "harmful:test"))
    if isinstance(texts, al.data.ContrastivePairs):
        raise ActlabError("a metric needs a prompt list (e.g. neutral, harmful:test), not contrastive pairs")
    if name == "sentiment":
        return al.steer.Sentiment(texts, max_new_tokens=max_new_tokens, chat=texts.chat)
    return al.steer.RefusalRate(texts, max_new_tokens=max_new_tokens, chat=texts.chat)


def register(app: typer.Typer, out, err, load) -> None:
    """Add `actlab steer ...` to the app."""
    steer = typer.Typer(no_args_is_help=True, help="Fit, apply, measure and search steering vectors.")
    app.add_typer(steer, name="steer")

    @steer.command()
    def train(model: Annotated[str, typer.Argument(help="model reference")],
              pairs: Annotated[str, typer.Option(help="sentiment, refusal, truth, bandit (EAST) or a .jsonl; "
                                                      "append :train or :test for a split")] = "sentiment",
              method: Annotated[str, typer.Option(help="diffmean, pca-diff, pca-center, probe or east")] = "diffmean",
              sites: Annotated[str, typer.Option(help="site pattern(s)")] = "blocks.*.resid_post",
              read: Annotated[str, typer.Option(help="last, mean or a token index")] = "last",
              out_path: Annotated[Path, typer.Option("--out", help="the vector folder to write")] = Path("vector.steer"),
              gguf: Annotated[Optional[Path], typer.Option(help="also export a llama.cpp control vector")] = None,
              batch_size: Annotated[int, typer.Option(min=1)] = 16,
              dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16")] = "float32") -> None:
        """Fit a steering vector on contrastive prompts and save it."""
        import actlab as al

        lab = load(model, dtype)
        data = _pairs(pairs)
        if method == "east":
            vec = al.steer.EAST(read=_read(read), batch_size=batch_size).fit(lab, data, sites=sites)
        elif method in al.steer.METHODS:
            vec = al.steer.METHODS[method](read=_read(read), batch_size=batch_size).fit(lab, data, sites=sites)
        else:
            raise ActlabError(f"unknown method {method!r}: use {', '.join([*al.steer.METHODS, 'east'])}")
        vec.save(out_path)
        if gguf is not None:
            vec.to_gguf(gguf)
        err.print(f"{vec!r} → {out_path}" + (f" and {gguf}" if gguf else ""), markup=False)
        norms = vec.norms()
        out.print("  ".join(f"{s}: {n:.2f}" for s, n in norms.items()), markup=False)

    @steer.command()
    def generate(model: Annotated[str, typer.Argument(help="model reference")],
                 vector: Annotated[str, typer.Option(help="a .steer folder or a .gguf control vector")],
                 prompt: Annotated[list[str], typer.Option(help="a prompt (repeat for several)")],
                 alpha: Annotated[float, typer.Option(help="strength: x + alpha · direction")] = 4.0,
                 tokens: Annotated[str, typer.Option(help="all, prompt, generated, last or indices")] = "all",
                 max_new_tokens: Annotated[int, typer.Option(min=1)] = 40,
                 chat: Annotated[bool, typer.Option(help="wrap prompts in the chat template")] = False,
                 baseline: Annotated[bool, typer.Option(help="also print the unsteered continuation")] = True,
                 dtype: Annotated[str, typer.Option()] = "float32") -> None:
        """Generate with a steering vector added (greedy), beside the unsteered continuation."""
        import actlab as al

        lab = load(model, dtype)
        steering = load_vector(vector).add(alpha, tokens=_tokens(tokens))
        fed = al.data.apply_chat(lab.tokenizer, prompt) if chat else list(prompt)
        with lab.edit(steering):
            steered = lab.generate(fed, max_new_tokens=max_new_tokens)
        plain = lab.generate(fed, max_new_tokens=max_new_tokens) if baseline else [None] * len(fed)
        for p, s, b in zip(prompt, steered, plain):
            out.print(f"[bold]{p}[/bold]")
            if b is not None:
                out.print(f"  unsteered: {b!r}", markup=False)
            out.print(f"  steered (alpha {alpha:g}): {s!r}", markup=False)

    @steer.command("eval")
    def evaluate(model: Annotated[str, typer.Argument(help="model reference")],
                 vector: Annotated[str, typer.Option(help="a .steer folder or a .gguf control vector")],
                 alpha: Annotated[float, typer.Option()] = 4.0,
                 tokens: Annotated[str, typer.Option()] = "all",
                 metric: Annotated[str, typer.Option(help="sentiment, refusal or none")] = "sentiment",
                 prompts: PromptsOpt = None,
                 max_new_tokens: Annotated[int, typer.Option(min=1)] = 40,
                 corpus: Annotated[str, typer.Option(help="neutral text for KL and entropy")] = "austen:test",
                 max_tokens: Annotated[int, typer.Option(min=16)] = 2048,
                 seq_len: Annotated[int, typer.Option(min=2)] = 256,
                 dtype: Annotated[str, typer.Option()] = "float32",
                 as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
        """Measure a vector: behaviour metric, KL / top-1 on neutral text, generation perplexity, entropy."""
        import actlab as al

        lab = load(model, dtype)
        steering = load_vector(vector).add(alpha, tokens=_tokens(tokens))
        effect = al.steer.measure_effect(lab, steering, metric_for(metric, prompts, max_new_tokens), corpus=corpus,
                                         seq_len=seq_len, max_tokens=max_tokens)
        if as_json:
            print(effect.to_json())
            return
        out.print(effect)
        for s in effect.samples:
            out.print(f"[bold]{s['prompt']}[/bold]\n  unsteered: {s['unsteered']!r}\n  steered:   {s['steered']!r}",
                      highlight=False)

    @steer.command()
    def search(model: Annotated[str, typer.Argument(help="model reference")],
               pairs: Annotated[str, typer.Option(help="contrastive pairs, as for train")] = "sentiment",
               metric: Annotated[str, typer.Option(help="sentiment, refusal or none (layer ranking only)")] = "sentiment",
               prompts: PromptsOpt = None,
               sites: Annotated[str, typer.Option()] = "blocks.*.resid_post",
               alphas: Annotated[str, typer.Option(help="comma-separated strengths")] = "1,2,4,8",
               kl_budget: Annotated[float, typer.Option()] = 0.1,
               top_layers: Annotated[int, typer.Option(min=1)] = 3,
               max_new_tokens: Annotated[int, typer.Option(min=1)] = 40,
               out_path: Annotated[Optional[Path], typer.Option("--out", help="save the chosen vector")] = None,
               dtype: Annotated[str, typer.Option()] = "float32",
               as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
        """Rank layers by class separation, sweep alpha under a KL budget, report the chosen setting."""
        import actlab as al

        lab = load(model, dtype)
        try:
            strengths = tuple(float(a) for a in alphas.split(","))
        except ValueError:
            raise ActlabError(f"--alphas must be comma-separated numbers, not {alphas!r}") from None
        result = al.steer.LayerSearch(metric=metric_for(metric, prompts, max_new_tokens), sites=sites,
                                      alphas=strengths, kl_budget=kl_budget, top_layers=top_layers).fit(lab, _pairs(pairs))
        if out_path is not None and result.site is not None:
            result.vector.save(out_path)
        if as_json:
            print(json.dumps(result.to_dict()))
            return
        out.print(result)
        out.print(f"chosen: {result.chosen}", markup=False)
