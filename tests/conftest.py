"""Shared fixtures: tiny random models of every supported architecture, and the embedded models."""

from __future__ import annotations

import pytest
import torch

from tiny_models import ARCHS, tiny_model

torch.set_num_threads(1)  # the suite runs on two pytest workers


def char_tokenizer():
    """A character-level fast tokenizer (ids 4..98 for printable ASCII) with pad/bos/eos."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + [chr(c) for c in range(32, 127)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")


@pytest.fixture(scope="session")
def tokenizer():
    return char_tokenizer()


def make_tiny_lab(arch: str):
    import actlab as al

    return al.Lab.from_model(tiny_model(arch), char_tokenizer(), name=f"tiny-{arch}")


@pytest.fixture(params=ARCHS)
def tiny_lab(request):
    return make_tiny_lab(request.param)


@pytest.fixture(scope="session")
def smollm2():
    import actlab as al

    return al.load("smollm2-135m", dtype="float32")


@pytest.fixture(scope="session")
def gemma3():
    import actlab as al

    return al.load("gemma3-270m", dtype="float32")
