"""Site vocabulary: names, shapes, patterns and errors on every architecture."""

import pytest

import actlab as al
from actlab.sites import BLOCK_COMPONENTS


def test_every_component_exists_on_every_block(tiny_lab):
    names = set(tiny_lab.sites())
    parallel = tiny_lab.catalog.parallel
    for i in range(tiny_lab.n_layers):
        for component in BLOCK_COMPONENTS:
            expected = not (component == "resid_mid" and parallel)
            assert (f"blocks.{i}.{component}" in names) == expected
    assert {"embed", "final_norm", "logits"} <= names


def test_patterns_globs_ranges_and_lists(tiny_lab):
    assert tiny_lab.sites("blocks.*.attn.k") == [f"blocks.{i}.attn.k" for i in range(3)]
    assert tiny_lab.sites("blocks.1-2.resid_post") == ["blocks.1.resid_post", "blocks.2.resid_post"]
    # a list comes back in execution order, without duplicates
    assert tiny_lab.sites(["blocks.2.resid_post", "blocks.0.attn.in", "blocks.0.attn.in"]) == \
        ["blocks.0.attn.in", "blocks.2.resid_post"]
    assert tiny_lab.sites("blocks.0.resid_pre, logits") == ["blocks.0.resid_pre", "logits"]


def test_shapes_follow_the_config(tiny_lab):
    c = tiny_lab.catalog
    assert tiny_lab.site("blocks.0.attn.q").shape == (c.n_heads, c.head_dim)
    assert tiny_lab.site("blocks.0.attn.k").shape == (c.n_kv_heads, c.head_dim)
    assert tiny_lab.site("blocks.0.attn.pattern").shape == (c.n_heads, None)
    assert tiny_lab.site("blocks.0.mlp.act").shape == (c.d_mlp,)
    assert tiny_lab.site("logits").shape == (tiny_lab.model.config.vocab_size,)


def test_unknown_site_names_the_closest():
    from conftest import make_tiny_lab

    lab = make_tiny_lab("llama")
    with pytest.raises(al.ActlabError, match="did you mean: blocks.0.resid_post"):
        lab.sites("blocks.0.resid_psot")
    with pytest.raises(al.ActlabError, match="3 blocks"):
        lab.sites("blocks.7.resid_post")
    with pytest.raises(al.ActlabError, match="end must not be below"):
        lab.sites("blocks.2-1.resid_post")


def test_resid_mid_of_parallel_blocks_is_a_clear_error():
    from conftest import make_tiny_lab

    lab = make_tiny_lab("gpt_neox")
    assert lab.catalog.parallel
    with pytest.raises(al.ActlabError, match="parallel"):
        lab.sites("blocks.0.resid_mid")


def test_unknown_architecture_is_a_clear_error():
    import torch.nn as nn

    class Weird(nn.Module):
        class config:
            model_type = "llamma"

    with pytest.raises(al.ActlabError, match="did you mean: llama"):
        al.arch.adapter_for(Weird())
