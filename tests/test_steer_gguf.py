"""llama.cpp control-vector GGUF files: round trip, layer numbering, and refusals."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from actlab.errors import ActlabError
from actlab.steer.gguf import read_control_vector, tensor_name, write_control_vector

D = 16


def _directions(blocks=(1, 3, 7), d=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {b: torch.randn(d, generator=g) for b in blocks}
    # values whose bits must survive exactly: signed zero, subnormal, extremes
    out[blocks[0]][:4] = torch.tensor([-0.0, 1e-45, 3.4028235e38, -1.1754944e-38])
    return out


def _str(field) -> str:
    return bytes(field.parts[field.data[0]]).decode()


def test_round_trip_own_reader(tmp_path):
    dirs = _directions()
    out = write_control_vector(tmp_path / "v.gguf", dirs, "llama")
    assert out == tmp_path / "v.gguf" and out.is_file()
    got, hint = read_control_vector(out)
    assert hint == "llama"
    assert list(got) == [1, 3, 7]
    for b, v in dirs.items():
        assert got[b].dtype == torch.float32 and got[b].shape == (D,)
        assert torch.equal(got[b].view(torch.int32), v.view(torch.int32))


def test_round_trip_gguf_reader(tmp_path):
    dirs = _directions(blocks=(2, 5, 11))
    path = write_control_vector(tmp_path / "v.gguf", dirs, "qwen2")
    r = gguf.GGUFReader(path)
    assert _str(r.get_field("general.architecture")) == "controlvector"
    assert _str(r.get_field("controlvector.model_hint")) == "qwen2"
    lc = r.get_field("controlvector.layer_count")
    assert lc.types == [gguf.GGUFValueType.UINT32]
    assert int(lc.parts[lc.data[0]][0]) == 3  # as repeng writes it: the number of directions
    assert set(r.fields) >= {"general.architecture", "controlvector.model_hint", "controlvector.layer_count"}
    assert sorted(t.name for t in r.tensors) == ["direction.11", "direction.2", "direction.5"]
    for t in r.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert [int(s) for s in t.shape] == [D]
        block = int(t.name.split(".")[1])
        expect = dirs[block].numpy()
        assert np.asarray(t.data).dtype == np.float32
        assert np.array_equal(np.asarray(t.data).view(np.int32), expect.view(np.int32))


def test_layer_numbering_is_block_index(tmp_path):
    # llama.cpp adds direction.N to the output of its 0-based block il == N (l_out), which is
    # actlab's blocks.N.resid_post: no shift in either direction.
    assert tensor_name(1) == "direction.1"
    assert tensor_name(29) == "direction.29"
    path = write_control_vector(tmp_path / "v.gguf", {4: torch.ones(D), 1: torch.zeros(D)}, "m")
    names = [t.name for t in gguf.GGUFReader(path).tensors]
    assert names == ["direction.1", "direction.4"]
    got, _ = read_control_vector(path)
    assert torch.equal(got[4], torch.ones(D)) and torch.equal(got[1], torch.zeros(D))


def test_converts_to_float32(tmp_path):
    v = torch.arange(D, dtype=torch.float64) / 3
    path = write_control_vector(tmp_path / "v.gguf", {2: v, 3: v.to(torch.bfloat16)}, "m")
    got, _ = read_control_vector(path)
    assert torch.equal(got[2], v.float())
    assert torch.equal(got[3], v.to(torch.bfloat16).float())


def test_reads_repeng_style_file(tmp_path):
    # what repeng's ControlVector.export_gguf writes (same numbering as llama.cpp)
    path = tmp_path / "repeng.gguf"
    w = gguf.GGUFWriter(path, "controlvector")
    w.add_string("controlvector.model_hint", "mistral")
    w.add_uint32("controlvector.layer_count", 2)
    a, b = np.full(D, 0.5, np.float32), np.arange(D, dtype=np.float32)
    w.add_tensor("direction.31", a)
    w.add_tensor("direction.30", b)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    got, hint = read_control_vector(path)
    assert hint == "mistral" and list(got) == [30, 31]
    assert np.array_equal(got[31].numpy(), a) and np.array_equal(got[30].numpy(), b)


def test_overwrite_is_atomic_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "v.gguf"
    write_control_vector(path, _directions(), "a")
    write_control_vector(path, {9: torch.ones(D)}, "b")
    got, hint = read_control_vector(path)
    assert hint == "b" and list(got) == [9]
    assert [p.name for p in path.parent.iterdir()] == ["v.gguf"]
    # a failed write leaves the old file in place and no temp file behind
    with pytest.raises(ActlabError):
        write_control_vector(path, {0: torch.ones(D)}, "c")
    assert read_control_vector(path)[1] == "b"
    assert [p.name for p in path.parent.iterdir()] == ["v.gguf"]


def test_block_zero_rejected(tmp_path):
    with pytest.raises(ActlabError, match="block 0"):
        write_control_vector(tmp_path / "v.gguf", {0: torch.ones(D), 1: torch.ones(D)}, "m")
    assert not (tmp_path / "v.gguf").exists()


@pytest.mark.parametrize(
    "dirs, match",
    [
        ({}, "no directions"),
        ({1: torch.ones(D), 2: torch.ones(D + 1)}, "widths differ"),
        ({1: torch.ones(2, D)}, "1-D"),
        ({1: torch.tensor(1.0)}, "1-D"),
        ({1: torch.ones(0)}, "empty"),
        ({-1: torch.ones(D)}, ">= 0"),
        ({"1": torch.ones(D)}, "int"),
        ({True: torch.ones(D)}, "int"),
        ({1: np.ones(D, np.float32)}, "torch.Tensor"),
    ],
)
def test_write_errors(tmp_path, dirs, match):
    with pytest.raises(ActlabError, match=match):
        write_control_vector(tmp_path / "v.gguf", dirs, "m")
    assert list(tmp_path.iterdir()) == []


def test_write_model_hint_must_be_str(tmp_path):
    with pytest.raises(ActlabError, match="model_hint"):
        write_control_vector(tmp_path / "v.gguf", {1: torch.ones(D)}, None)


def _gguf(path, arch, tensors, hint="m"):
    w = gguf.GGUFWriter(path, arch)
    if hint is not None:
        w.add_string(f"{arch}.model_hint", hint)
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_read_missing_file(tmp_path):
    with pytest.raises(ActlabError, match="not found"):
        read_control_vector(tmp_path / "nope.gguf")


def test_read_not_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"not a gguf file at all")
    with pytest.raises(ActlabError, match="not a readable GGUF"):
        read_control_vector(p)


def test_read_wrong_architecture(tmp_path):
    p = _gguf(tmp_path / "model.gguf", "llama", {"direction.1": np.ones(D, np.float32)})
    with pytest.raises(ActlabError, match="not a control vector"):
        read_control_vector(p)


def test_read_model_hint_optional(tmp_path):
    p = _gguf(tmp_path / "v.gguf", "controlvector", {"direction.2": np.ones(D, np.float32)}, hint=None)
    got, hint = read_control_vector(p)
    assert hint is None and list(got) == [2]


@pytest.mark.parametrize(
    "tensors, match",
    [
        ({"direction.0": np.ones(D, np.float32)}, "direction.0"),
        ({"direction.1": np.ones(D, np.float16)}, "F32"),
        ({"direction.1": np.ones((2, D), np.float32)}, "1-D"),
        ({"direction.1": np.ones(D, np.float32), "direction.2": np.ones(D + 2, np.float32)}, "earlier"),
        ({"blk.1.attn_q.weight": np.ones(D, np.float32)}, "unexpected tensor"),
        ({"direction.x": np.ones(D, np.float32)}, "unexpected tensor"),
        ({}, "no direction tensors"),
    ],
)
def test_read_invalid_control_vectors(tmp_path, tensors, match):
    p = _gguf(tmp_path / "v.gguf", "controlvector", tensors)
    with pytest.raises(ActlabError, match=match):
        read_control_vector(p)
