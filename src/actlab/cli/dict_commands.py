"""`actlab dict fit|eval|jaccard`: sparse dictionaries (ITDA, TopK SAE) from the terminal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from actlab.errors import ActlabError

KINDS = ("itda", "topk-sae")
StoreArg = Annotated[Path, typer.Argument(help="an activation store (.zarr, from `actlab record`)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of text")]
MinPosOpt = Annotated[int, typer.Option(min=0, help="skip tokens at in-window positions below this "
                                                    "(1 leaves out the attention-sink first token)")]


def register(app: typer.Typer, out, err, load) -> None:
    """Add `actlab dict ...` to the app."""
    group = typer.Typer(no_args_is_help=True, help="Fit and measure sparse dictionaries (ITDA, TopK SAE).")
    app.add_typer(group, name="dict")

    @group.command()
    def fit(store: StoreArg,
            site: Annotated[str, typer.Option(help="the site to decompose, e.g. blocks.12.resid_post")],
            kind: Annotated[str, typer.Option(help="itda or topk-sae")] = "itda",
            size: Annotated[int, typer.Option(min=1, help="atoms (ITDA) or latents (SAE)")] = 4096,
            k: Annotated[int, typer.Option(min=1, help="active atoms / latents per token")] = 32,
            threshold: Annotated[float, typer.Option(help="ITDA: normalised error above which a token joins")] = 0.1,
            pursuit: Annotated[str, typer.Option(help="ITDA: mp or omp")] = "mp",
            epochs: Annotated[int, typer.Option(min=1, help="SAE: passes over the store")] = 10,
            max_tokens: Annotated[Optional[int], typer.Option(min=1, help="use only the first tokens")] = None,
            min_position: MinPosOpt = 0,
            eval_tokens: Annotated[int, typer.Option(min=1, help="report FVE on this many first tokens")] = 4096,
            out_dir: Annotated[Path, typer.Option("--out", help="the dictionary folder to write")] = Path("dict"),
            as_json: JsonOpt = False) -> None:
        """Fit a dictionary on one site of a store, save it, and report FVE on the store's first tokens."""
        import actlab.read.itda as itda
        import actlab.read.sae as sae
        from actlab.store import open_store

        if kind not in KINDS:
            raise ActlabError(f"unknown kind {kind!r}: use {' or '.join(KINDS)}")
        acts = open_store(store)
        if kind == "itda":
            estimator = itda.ITDA(size=size, k=k, threshold=threshold, pursuit=pursuit, max_tokens=max_tokens,
                                  min_position=min_position, progress=not as_json)
        else:
            estimator = sae.TopKSAE(n_latents=size, k=k, epochs=epochs, max_tokens=max_tokens,
                                    min_position=min_position, progress=not as_json)
        dico = estimator.fit(acts, site)
        dico.save(out_dir)
        summary = {"kind": dico.kind, "site": site, "latents": dico.n_latents, "k": dico.k,
                   "seconds": dico.data["seconds"], "eval_tokens": eval_tokens,
                   "fve": dico.fve(acts, max_tokens=min(eval_tokens, max_tokens or eval_tokens),
                                   min_position=min_position),
                   "out": str(out_dir)}
        _show(out, summary, as_json)

    @group.command("eval")
    def evaluate(dictionary: Annotated[Path, typer.Argument(help="a folder written by `actlab dict fit`")],
                 store: StoreArg,
                 max_tokens: Annotated[Optional[int], typer.Option(min=1)] = None,
                 min_position: MinPosOpt = 0,
                 model: Annotated[Optional[str], typer.Option(help="also splice into this model: ΔCE")] = None,
                 corpus: Annotated[str, typer.Option(help="text for ΔCE")] = "austen:test",
                 ce_tokens: Annotated[int, typer.Option(min=16, help="tokens of the corpus for ΔCE")] = 2048,
                 seq_len: Annotated[int, typer.Option(min=2)] = 256,
                 dtype: Annotated[str, typer.Option(help="model dtype for ΔCE")] = "float32",
                 as_json: JsonOpt = False) -> None:
        """Fraction of variance explained on a store and, with --model, ΔCE when spliced in."""
        from actlab.read.splice import load_dictionary
        from actlab.store import open_store

        dico = load_dictionary(dictionary)
        summary = {"kind": dico.kind, "site": dico.site, "latents": dico.n_latents, "k": dico.k,
                   "fve": dico.fve(open_store(store), max_tokens=max_tokens, min_position=min_position)}
        if model is not None:
            positions = (lambda ctx: ctx.positions >= min_position) if min_position else "all"
            ce = dico.delta_ce(load(model, dtype), corpus, seq_len=seq_len, max_tokens=ce_tokens,
                               positions=positions, progress=not as_json)
            summary.update(nll_clean=ce.nll_clean, nll_spliced=ce.nll_spliced, delta_ce=ce.delta)
        _show(out, summary, as_json)

    @group.command()
    def jaccard(first: Annotated[Path, typer.Argument(help="an ITDA dictionary folder")],
                second: Annotated[Path, typer.Argument(help="another, fitted on the same prompts")]) -> None:
        """Jaccard index of two ITDA dictionaries' (prompt, token position) atom keys."""
        from actlab.read.itda import ITDADictionary, jaccard as index

        out.print(f"{index(ITDADictionary.load(first), ITDADictionary.load(second)):.4f}")


def _show(out, summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    out.print("  ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in summary.items()),
              markup=False)
