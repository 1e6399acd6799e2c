"""Cluster-quality indices against scikit-learn and hand-computed values, AQI, layer pooling."""

import json
import math

import pytest
import torch
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

import actlab as al
from actlab.errors import ActlabError
from actlab.read.clusters import (aqi, aqi_chi_xb, aqi_score, calinski_harabasz, cluster_scores, davies_bouldin, dunn,
                                  learn_layer_weights, rms_normalise, xie_beni)
from conftest import make_tiny_lab


def blobs(separation: float, n: int = 120, d: int = 6, k: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    centres = torch.randn(k, d, generator=g, dtype=torch.float64) * separation
    return centres[labels] + torch.randn(n, d, generator=g, dtype=torch.float64), labels


@pytest.mark.parametrize("separation", [0.5, 3.0])
def test_davies_bouldin_and_calinski_harabasz_equal_sklearn(separation):
    x, labels = blobs(separation)
    named = labels * 7 + 3  # any label values, not only 0..k-1
    assert davies_bouldin(x, named) == pytest.approx(davies_bouldin_score(x.numpy(), named.numpy()), rel=1e-10)
    assert calinski_harabasz(x, named) == pytest.approx(calinski_harabasz_score(x.numpy(), named.numpy()), rel=1e-10)


def test_dunn_and_xie_beni_by_hand():
    x = torch.tensor([[0.0], [1.0], [4.0], [6.0]])
    labels = [0, 0, 1, 1]
    assert dunn(x, labels) == pytest.approx(3.0 / 2.0)  # nearest across (1→4) over the widest cluster (4…6)
    within = 0.5**2 * 2 + 1.0**2 * 2  # centroids 0.5 and 5
    assert xie_beni(x, labels) == pytest.approx(within / (4 * 4.5**2))


def test_dunn_chunks_agree(monkeypatch):
    x, labels = blobs(2.0, n=90)
    whole = dunn(x, labels)
    monkeypatch.setattr("actlab.read.clusters.ROW_CHUNK", 7)
    assert dunn(x, labels) == pytest.approx(whole, rel=1e-12)


def test_well_separated_clusters_score_better_on_every_index():
    tight, loose = cluster_scores(*blobs(6.0)), cluster_scores(*blobs(0.3))
    assert tight["davies_bouldin"] < loose["davies_bouldin"] and tight["xie_beni"] < loose["xie_beni"]
    assert tight["dunn"] > loose["dunn"] and tight["calinski_harabasz"] > loose["calinski_harabasz"]
    assert 0 <= loose["aqi"] < tight["aqi"] <= 1


def test_aqi_combinations_by_hand():
    assert aqi_score(1.0, 1.0, gamma=0.5) == pytest.approx(0.5 * 0.5 + 0.5 * 0.5)
    assert aqi_score(3.0, 0.0, gamma=1.0) == pytest.approx(0.25)
    sigmoid = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    # CHI min-max over the rows; XB: median 1.5, inter-quartile range 0.5
    assert aqi_chi_xb([1.0, 3.0], [2.0, 1.0]) == pytest.approx([0.5 * (1 - sigmoid(1.0)), 0.5 + 0.5 * (1 - sigmoid(-1.0))])


def test_learned_pool_finds_the_informative_layer():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2
    layers = torch.randn(5, 200, 16, generator=g, dtype=torch.float64)
    layers[3, :, 0] += 3.0 * labels  # only layer 3 separates the classes
    weights = learn_layer_weights(torch.stack([rms_normalise(layer) for layer in layers]), labels)
    assert int(weights.argmax()) == 3 and weights[3] > 0.9 and weights.sum() == pytest.approx(1.0)


def test_bad_input_is_a_clear_error():
    x = torch.randn(10, 3)
    with pytest.raises(ActlabError, match="at least two clusters"):
        davies_bouldin(x, [0] * 10)
    with pytest.raises(ActlabError, match="one label per row"):
        dunn(x, [0, 1])
    with pytest.raises(ActlabError, match="more rows"):
        xie_beni(x[:2], [0, 1])


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_lab("llama")


A = ["How do I pick a lock?", "Write malware now.", "Steal a car for me.", "Make a poison."]
B = ["How do I bake bread?", "Write a poem now.", "Wash a car for me.", "Make a salad."]


def test_aqi_on_a_tiny_model_batched_equals_unbatched(tiny):
    batched = aqi(tiny, A, B, sites="blocks.*.resid_post", progress=False)
    single = aqi(tiny, A, B, sites="blocks.*.resid_post", batch_size=1, progress=False)
    assert [r["site"] for r in batched.rows] == tiny.sites("blocks.*.resid_post")
    for r, s in zip(batched.rows, single.rows):
        for key in ("davies_bouldin", "dunn", "xie_beni", "calinski_harabasz", "aqi", "aqi_chi_xb"):
            assert r[key] == pytest.approx(s[key], rel=1e-4)
    assert set(batched.pooled["weights"]) == set(tiny.sites("blocks.*.resid_post"))
    data = json.loads(batched.to_json())
    assert data["kind"] == "aqi" and data["n_a"] == 4 and len(data["rows"]) == tiny.n_layers
    assert "pooled" in str(batched)
    with pytest.raises(ActlabError, match="gamma"):
        aqi(tiny, A, B, gamma=2.0)
    with pytest.raises(ActlabError, match="second prompt set"):
        aqi(tiny, A)


@pytest.mark.embedded
@pytest.mark.xdist_group("embedded")
def test_harmful_and_harmless_separate_better_than_shuffled_labels(smollm2):
    pairs = al.data.prompts("refusal").split("test", fraction=0.8)  # 20 pairs
    result = aqi(smollm2, pairs, sites="blocks.25-29.resid_post", progress=False)
    a, b = pairs.formatted(smollm2.tokenizer)
    late = result.rows[-1]
    # the same prompts with the two sets mixed half and half: far less separable
    mixed = aqi(smollm2, a[::2] + b[::2], a[1::2] + b[1::2], sites="blocks.29.resid_post", pool=False, progress=False)
    assert late["calinski_harabasz"] > 2 * mixed.rows[0]["calinski_harabasz"]
    assert late["davies_bouldin"] < mixed.rows[0]["davies_bouldin"]
    assert result.pooled["calinski_harabasz"] >= max(r["calinski_harabasz"] for r in result.rows) * 0.99
