"""`actlab kv compare`: KV-cache quantization methods from the terminal."""

from __future__ import annotations

from typing import Annotated, Optional

import typer


def register(app: typer.Typer, out, err, load) -> None:
    """Add `actlab kv ...` to the app."""
    kv = typer.Typer(no_args_is_help=True, help="Compare KV-cache quantization methods (fake quant and a packed cache).")
    app.add_typer(kv, name="kv")

    @kv.command("compare")
    def compare_(model: Annotated[str, typer.Argument(help="model reference")],
                 methods: Annotated[list[str], typer.Option("--methods", help="kv16, pertoken4, kivi4, kvquant3, "
                                                            "xquant4, xquant-cl2, kvquant3(outliers=0), ...")],
                 corpus: Annotated[str, typer.Option(help="evaluation corpus spec")] = "austen:test",
                 calibration: Annotated[str, typer.Option("--calibration", help="calibration corpus")] = "austen:train",
                 samples: Annotated[int, typer.Option(min=1, help="calibration windows")] = 16,
                 seq_len: Annotated[int, typer.Option("--seq-len", min=2)] = 512,
                 max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="fake-quant tokens")] = 16384,
                 context: Annotated[int, typer.Option(min=1, help="cache protocol: prefilled tokens")] = 384,
                 score: Annotated[int, typer.Option(min=1, help="cache protocol: decoded, scored tokens")] = 128,
                 cache_tokens: Annotated[int, typer.Option("--cache-tokens", min=1,
                                                           help="cache protocol: tokens of windows")] = 4096,
                 as_json: Annotated[bool, typer.Option("--json")] = False,
                 extra: Annotated[Optional[list[str]], typer.Argument(help="more methods", show_default=False)] = None,
                 ) -> None:
        """PPL (teacher forced and cache in the loop), ΔPPL %, bytes per token and compression vs fp16."""
        from actlab.compress.kv.compare import kv_compare
        from actlab.compress.kv.presets import kv_method

        names = [*methods, *(extra or [])]
        for name in names:  # a bad name fails before the model loads
            kv_method(name)
        lab = load(model, "float32")
        result = kv_compare(lab, names, corpus, seq_len=seq_len, max_tokens=max_tokens, context=context, score=score,
                            cache_tokens=cache_tokens, calibration=calibration, samples=samples, progress=not as_json)
        if as_json:
            print(result.to_json())
        else:
            out.print(result.table())
