"""The Ray engine writes the same store as the local engine (2 actors on a local Ray)."""

import numpy as np
import pytest
import torch

import actlab as al
from conftest import char_tokenizer
from tiny_models import tiny_model

pytestmark = pytest.mark.xdist_group("ray")


def test_ray_store_equals_local_store(tmp_path):
    pytest.importorskip("ray")
    tiny_model("gpt2").save_pretrained(tmp_path / "model")
    char_tokenizer().save_pretrained(tmp_path / "model")
    (tmp_path / "text.txt").write_text("Ray writes chunks; the driver folds them in order. " * 200)
    torch.set_num_threads(1)  # actors run one thread each: same arithmetic
    lab = al.load(str(tmp_path / "model"))
    kw = dict(tokens=4096, seq_len=64, batch_size=4, chunk_windows=8, dtype="bfloat16", covariance=True,
              progress=False)
    sites = "blocks.*.resid_post,blocks.0.attn.v"
    local = al.harvest(lab, str(tmp_path / "text.txt"), sites, tmp_path / "local.zarr", **kw)
    remote = al.harvest(lab, str(tmp_path / "text.txt"), sites, tmp_path / "ray.zarr", engine="ray", workers=2, **kw)
    assert remote.manifest.progress.complete and remote.verify().ok
    assert remote.manifest.checksums == local.manifest.checksums
    for site in local.sites:
        assert torch.equal(remote[site][:], local[site][:])
        for name in ("mean", "m2", "m3", "m4", "min", "max", "comoment", "abs_hist", "norm_hist"):
            assert np.array_equal(getattr(remote.stats[site], name), getattr(local.stats[site], name)), name


def test_ray_needs_a_loadable_model(tmp_path):
    from conftest import make_tiny_lab

    (tmp_path / "text.txt").write_text("short text " * 200)
    with pytest.raises(al.ActlabError, match="al.load"):
        al.harvest(make_tiny_lab("llama"), str(tmp_path / "text.txt"), "blocks.0.resid_post", tmp_path / "s.zarr",
                   tokens=512, seq_len=32, engine="ray", progress=False)
