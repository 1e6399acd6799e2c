"""A harvest killed with SIGKILL at random instants and resumed ends exactly like an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from safetensors.numpy import load_file

import actlab as al
from conftest import char_tokenizer
from tiny_models import tiny_model

pytestmark = pytest.mark.xdist_group("resume")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    tiny_model("llama").save_pretrained(root / "model")
    char_tokenizer().save_pretrained(root / "model")
    (root / "text.txt").write_text("It is a truth universally acknowledged, that a single man. " * 600)
    return root


def harvest_cmd(root, out, *extra):
    return [sys.executable, "-m", "actlab", "record", str(root / "model"), "--corpus", str(root / "text.txt"),
            "--sites", "blocks.*.resid_post,blocks.1.mlp.act", "--tokens", "32768", "--seq-len", "64",
            "--batch-size", "4", "--chunk-windows", "4", "--dtype", "bfloat16", "--out", str(out), *extra]


def test_sigkill_and_resume_gives_identical_store(setup):
    root = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(harvest_cmd(root, root / "reference.zarr"), check=True, env=env, capture_output=True)
    target = root / "killed.zarr"
    rng = np.random.default_rng(0)
    kills = 0
    for attempt in range(12):
        proc = subprocess.Popen(harvest_cmd(root, target, "--resume"), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if attempt < 4:  # kill somewhere in the middle of the harvest
            while not (target / "actlab.json").exists() and proc.poll() is None:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 2.0))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        proc.wait()
        if al.open_store(target).manifest.progress.complete:
            break
    assert kills >= 2, "the harvest finished before it could be killed: make it longer"
    ref, got = al.open_store(root / "reference.zarr"), al.open_store(target)
    assert got.verify().ok and got.manifest.checksums == ref.manifest.checksums
    ref_group, got_group = zarr.open_group(str(ref.root), mode="r"), zarr.open_group(str(got.root), mode="r")
    for name, array in ref_group.arrays():
        assert np.array_equal(np.asarray(array[:]), np.asarray(got_group[name][:])), name
    ref_stats = load_file(str(ref.root / ref.manifest.progress.stats_file))
    got_stats = load_file(str(got.root / got.manifest.progress.stats_file))
    assert ref_stats.keys() == got_stats.keys()
    for key in ref_stats:
        assert np.array_equal(ref_stats[key], got_stats[key]), key


def test_store_commands(setup, tmp_path):
    out = tmp_path / "cli.zarr"
    run = lambda *a: subprocess.run([sys.executable, "-m", "actlab", *a], capture_output=True, text=True)  # noqa: E731
    res = run("record", str(setup / "model"), "--corpus", str(setup / "text.txt"), "--sites", "blocks.0.resid_post",
              "--tokens", "1024", "--seq-len", "64", "--dtype", "int8", "--out", str(out))
    assert res.returncode == 0, res.stderr
    stats = json.loads(run("stats", str(out), "--json").stdout)
    site = stats["sites"]["blocks.0.resid_post"]
    assert stats["tokens"] == 1024 and site["n"] == 1024 and 0 < site["codec_relative_error"] < 0.02
    assert run("verify", str(out)).returncode == 0
    bad = run("stats", str(out), "blocks.0.resid_pots")
    assert bad.returncode == 2 and "did you mean" in bad.stderr
    again = run("record", str(setup / "model"), "--corpus", str(setup / "text.txt"), "--sites", "blocks.0.resid_post",
                "--tokens", "1024", "--seq-len", "64", "--out", str(out))
    assert again.returncode == 2 and "--resume" in again.stderr
    (out / "blocks.0.resid_post" / "c" / "0" / "0").write_bytes(b"garbage")
    broken = run("verify", str(out))
    assert broken.returncode == 1 and "damaged: blocks.0.resid_post chunk 0" in broken.stderr
