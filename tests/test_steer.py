"""Steering on tiny random models: exact extraction, artifacts, operators, scopes, batching, gates."""

import pytest
import torch

import actlab as al
from actlab.errors import ActlabError
from actlab.steer.extract import action_entropy
from conftest import make_tiny_lab
from tiny_models import tiny_model

POS = ["I love this day", "what a joy", "so happy now", "great fun here", "a wonderful gift"]
NEG = ["I hate this day", "what a pain", "so sad now", "awful mess here", "a terrible loss"]
SITES = "blocks.0-2.resid_post"


@pytest.fixture(scope="module")
def lab():
    return make_tiny_lab("llama")


def _by_hand(lab, prompts, site, positions="last"):
    rows = []
    for p in prompts:  # one prompt at a time: no padding anywhere
        with lab.record(site, positions=positions) as rec:
            lab.forward([p])
        rows.append(rec[site].double().mean(0))
    return torch.stack(rows)


def test_diffmean_equals_the_mean_difference_by_hand(tiny_lab):
    vec = al.steer.DiffMean(progress=False, batch_size=3).fit(tiny_lab, POS, NEG, sites=SITES)
    for site in tiny_lab.sites(SITES):
        expected = _by_hand(tiny_lab, POS, site).mean(0) - _by_hand(tiny_lab, NEG, site).mean(0)
        assert torch.allclose(vec.directions[site].double(), expected, atol=1e-5)
    assert vec.method == "DiffMean" and vec.fingerprint["weights_sha256"] == tiny_lab.fingerprint.weights_sha256


@pytest.mark.parametrize("read,positions", [("mean", "all"), (1, [1]), (-2, [-2])])
def test_read_positions(lab, read, positions):
    site = "blocks.1.resid_post"
    vec = al.steer.DiffMean(read=read, progress=False, batch_size=2).fit(lab, POS, NEG, sites=site)
    expected = _by_hand(lab, POS, site, positions).mean(0) - _by_hand(lab, NEG, site, positions).mean(0)
    assert torch.allclose(vec.directions[site].double(), expected, atol=1e-5)


def test_pca_directions_by_hand():
    torch.manual_seed(0)
    true = torch.randn(16)
    neg = torch.randn(40, 16)
    pos = neg + 3.0 * true / true.norm() + 0.05 * torch.randn(40, 16)
    u = true / true.norm()
    d = al.steer.PCADiff().direction(pos, neg)
    assert torch.nn.functional.cosine_similarity(d, u, dim=0) > 0.999
    assert abs(float(d.norm()) - 3.0) < 0.05  # scaled to the mean difference's projection
    diffs = (pos - neg).double()
    _, _, vh = torch.linalg.svd(diffs - diffs.mean(0), full_matrices=False)
    centred = al.steer.PCADiff(center=True).direction(pos, neg)
    assert abs(float(torch.nn.functional.cosine_similarity(centred.double(), vh[0], dim=0))) > 1 - 1e-6
    assert float(centred @ (pos - neg).mean(0)) > 0  # oriented from negative to positive


def test_pca_center_and_probe_find_the_class_axis():
    torch.manual_seed(1)
    axis = torch.zeros(16)
    axis[3] = 1.0
    pos = torch.randn(60, 16) * 0.3 + 2.0 * axis
    neg = torch.randn(60, 16) * 0.3 - 2.0 * axis
    for est in (al.steer.PCACenter(), al.steer.ProbeDirection()):
        d = est.direction(pos, neg)
        assert torch.nn.functional.cosine_similarity(d, axis, dim=0) > 0.95, type(est).__name__
        assert float(d @ axis) > 0


def test_paired_methods_need_pairs(lab):
    with pytest.raises(ActlabError, match="needs pairs"):
        al.steer.PCADiff(progress=False).fit(lab, POS, NEG[:3], sites="blocks.1.resid_post")
    with pytest.raises(ActlabError, match="read must be"):
        al.steer.DiffMean(read="first", progress=False).fit(lab, POS, NEG)


def test_save_load_round_trip_and_wrong_model(lab, tmp_path):
    vec = al.steer.DiffMean(progress=False).fit(lab, POS, NEG, sites=SITES)
    path = vec.save(tmp_path / "v.steer")
    back = al.steer.SteeringVector.load(path)
    assert back.sites == vec.sites and back.method == vec.method and back.fingerprint == vec.fingerprint
    assert all(torch.equal(back.directions[s], vec.directions[s]) for s in vec.sites)
    assert (path / "artifact.json").exists() and not list(path.glob("*.pkl"))
    other = al.Lab.from_model(tiny_model("llama", seed=1), lab.tokenizer, name="other")
    with pytest.raises(ActlabError, match="fitted on"):
        with other.edit(back.add(1.0)):
            pass
    with other.edit(back.for_any_model().add(1.0)):  # same width: allowed once unbound
        other.forward(["abc"])
    narrow = al.steer.SteeringVector({"blocks.1.resid_post": torch.ones(8)})
    with pytest.raises(ActlabError, match="width"):
        with lab.edit(narrow.add(1.0)):
            pass
    with pytest.raises(ActlabError, match="not an actlab artifact"):
        al.steer.SteeringVector.load(tmp_path)


def test_gguf_round_trip(lab, tmp_path):
    vec = al.steer.DiffMean(progress=False).fit(lab, POS, NEG, sites="blocks.1-2.resid_post")
    back = al.steer.SteeringVector.from_gguf(vec.to_gguf(tmp_path / "v.gguf"))
    assert back.sites == vec.sites and back.fingerprint is None
    assert all(torch.equal(back.directions[s], vec.directions[s]) for s in vec.sites)
    bad = al.steer.SteeringVector({"blocks.1.mlp.out": torch.ones(lab.d_model)})
    with pytest.raises(ActlabError, match="resid_post"):
        bad.to_gguf(tmp_path / "bad.gguf")


def test_vector_arithmetic(lab):
    a = al.steer.DiffMean(progress=False).fit(lab, POS, NEG, sites="blocks.0-1.resid_post")
    b = al.steer.DiffMean(progress=False).fit(lab, POS[:3], NEG[:3], sites="blocks.1-2.resid_post")
    s = a + b
    assert s.sites == ["blocks.0.resid_post", "blocks.1.resid_post", "blocks.2.resid_post"]
    assert torch.equal(s.directions["blocks.1.resid_post"], a.directions["blocks.1.resid_post"] + b.directions["blocks.1.resid_post"])
    assert torch.equal((-a).directions["blocks.0.resid_post"], -a.directions["blocks.0.resid_post"])
    assert torch.equal((2 * a).directions["blocks.0.resid_post"], 2 * a.directions["blocks.0.resid_post"])
    assert torch.allclose((a - a).directions["blocks.0.resid_post"], torch.zeros(lab.d_model))
    other = make_tiny_lab("qwen2")
    c = al.steer.DiffMean(progress=False).fit(other, POS, NEG, sites="blocks.0.resid_post")
    with pytest.raises(ActlabError, match="different models"):
        a + c


def _generate(lab, prompts, steering):
    with lab.edit(steering):
        return lab.generate(prompts, max_new_tokens=6)


def test_batched_steering_equals_one_by_one(tiny_lab):
    vec = al.steer.DiffMean(progress=False).fit(tiny_lab, POS, NEG, sites="blocks.1.resid_post")
    prompts = ["hello there", "a", "the longest prompt of them all"]
    batched = _generate(tiny_lab, prompts, vec.add(4.0))
    single = [_generate(tiny_lab, p, vec.add(4.0)) for p in prompts]
    assert batched == single
    assert batched != tiny_lab.generate(prompts, max_new_tokens=6)  # it does steer


def test_token_scopes(lab):
    vec = al.steer.DiffMean(progress=False).fit(lab, POS, NEG, sites="blocks.1.resid_post")
    prompts = ["hello there", "abc"]
    base = lab.forward(prompts)
    with lab.edit(vec.add(8.0, tokens="generated")):
        assert torch.equal(lab.forward(prompts), base)  # a prefill has no generated tokens
        generated = lab.generate(prompts, max_new_tokens=6)
    with lab.edit(vec.add(8.0, tokens="prompt")):
        assert not torch.allclose(lab.forward(prompts), base)
        prompt_only = lab.generate(prompts, max_new_tokens=6)
    with lab.edit(vec.add(8.0, tokens=[0])):
        logits = lab.forward(prompts)
    assert not torch.allclose(logits, base)
    assert generated != prompt_only


def test_operators_on_the_edited_activation(lab):
    site = "blocks.1.resid_post"
    vec = al.steer.DiffMean(progress=False).fit(lab, POS, NEG, sites=site)
    u = vec.directions[site] / vec.directions[site].norm()
    with lab.record(site) as base:
        lab.forward(POS)
    for steering, expected in [(vec.project_out(), torch.zeros(())), (vec.clamp(2.5), torch.tensor(2.5)),
                               (vec.scale(3.0), None)]:
        with lab.record(site) as rec, lab.edit(steering):
            lab.forward(POS)
        proj = rec[site] @ u
        want = 3.0 * (base[site] @ u) if expected is None else expected.expand_as(proj)
        assert torch.allclose(proj, want, atol=1e-4)
        orth = rec[site] - proj[:, None] * u
        assert torch.allclose(orth, base[site] - (base[site] @ u)[:, None] * u, atol=1e-4)


def test_several_vectors_at_once(lab):
    a = al.steer.DiffMean(progress=False).fit(lab, POS, NEG, sites="blocks.1.resid_post")
    b = al.steer.PCADiff(progress=False).fit(lab, POS, NEG, sites="blocks.1.resid_post")
    with lab.edit(a.add(2.0) + b.add(3.0)):
        together = lab.forward(POS)
    with lab.edit([a.add(2.0), b.add(3.0)]):
        as_list = lab.forward(POS)
    with lab.edit((2.0 * a + 3.0 * b).add(1.0)):
        summed = lab.forward(POS)
    assert torch.equal(together, as_list)
    assert torch.allclose(together, summed, atol=1e-4)


def test_conditional_steering_decides_per_sequence(lab):
    behaviour = al.steer.DiffMean(progress=False).fit(lab, POS, NEG, sites="blocks.2.resid_post")
    cond = al.steer.ConditionalSteering(condition_site="blocks.0.resid_post", test_fraction=0.4,
                                        progress=False).fit(lab, POS, NEG, behaviour=behaviour, alpha=6.0)
    prompts = ["so happy now", "so sad now", "what a joy", "awful mess here"]
    with lab.record("blocks.0.resid_post", positions="all") as rec:
        lab.forward(prompts)
    means = torch.stack([r.mean(0) for r in rec.per_prompt("blocks.0.resid_post")])
    assert 0 <= cond.stats["held_out_f1"] <= 1
    cond.threshold = float(cond.scores(means).median())  # two prompts on each side
    decisions = cond.decide(means)[:, 0].bool().tolist()
    assert sum(decisions) == 2
    batched = _generate(lab, prompts, cond.steering())
    for p, on, out in zip(prompts, decisions, batched):
        expected = _generate(lab, p, behaviour.add(6.0)) if on else lab.generate(p, max_new_tokens=6)
        assert out == expected


def test_best_f1_threshold():
    from actlab.steer.conditional import best_f1_threshold

    t, f1 = best_f1_threshold(torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([0, 0, 1, 1]))
    assert f1 == 1.0 and 0.2 < t < 0.8


def test_controller_learns_the_classes_and_steers_per_sequence(lab, tmp_path):
    direction = al.steer.DiffMean(progress=False).fit(lab, POS, NEG, sites="blocks.1-2.resid_post")
    ws = al.steer.SteeringController(read_sites="blocks.0.resid_post", alpha=5.0, epochs=200,
                                     progress=False).fit(lab, POS, NEG, direction=direction)
    acts, _ = al.steer.read_activations(lab, POS + NEG, "blocks.0.resid_post")
    gate = ws.predict(acts["blocks.0.resid_post"])
    assert gate[: len(POS), 0].min() > 0.8 and gate[len(POS):, 0].max() < 0.2
    prompts = [POS[0], NEG[0], POS[1]]
    batched = _generate(lab, prompts, ws.steering())
    assert batched == [_generate(lab, p, ws.steering()) for p in prompts]
    back = al.steer.WeightedSteering.load(ws.save(tmp_path / "c.ctrl"))
    assert torch.equal(back.predict(acts["blocks.0.resid_post"]), gate)
    with pytest.raises(ActlabError, match="before every steered site"):
        al.steer.SteeringController(read_sites="blocks.2.resid_post", progress=False).fit(
            lab, POS, NEG, direction=direction)


def test_east_weights_centred_activations_by_action_entropy(lab):
    prompts = ["choose: A or B? ", "pick A", "pick B", "B B B A "]
    vec = al.steer.EAST(progress=False, batch_size=2).fit(lab, prompts, sites="blocks.1.resid_post", actions=["A", "B"])
    ids = lab.tokenizer(["A", "B"], add_special_tokens=False)["input_ids"]
    rows, entropies = [], []
    for p in prompts:
        with lab.record("blocks.1.resid_post", positions="last") as rec:
            logits = lab.forward([p])
        rows.append(rec["blocks.1.resid_post"][0].double())
        entropies.append(action_entropy(logits[:, -1], [i[0] for i in ids])[0].double())
    h, x = torch.stack(entropies), torch.stack(rows)
    expected = ((h / h.sum())[:, None] * (x - x.mean(0))).sum(0)
    assert torch.allclose(vec.directions["blocks.1.resid_post"].double(), expected, atol=1e-5)
    with pytest.raises(ActlabError, match="one token"):
        al.steer.EAST(progress=False).fit(lab, prompts, actions=["AB", "B"])


def test_layer_search_ranks_layers_and_respects_the_kl_budget(lab, tmp_path):
    corpus = tmp_path / "neutral.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    probe_site = "blocks.2.resid_post"
    direction = al.steer.DiffMean(progress=False).fit(lab, POS, NEG, sites=probe_site).directions[probe_site]
    metric = al.steer.ProbeScore(direction, probe_site, ["a day", "the end"])
    search = al.steer.LayerSearch(metric=metric, sites="blocks.0-1.resid_post", top_layers=2, alphas=(0.5, 50.0),
                                  kl_budget=0.05, corpus=str(corpus), kl_tokens=256, progress=False)
    result = search.fit(lab, POS * 2, NEG * 2)
    assert [r["separation"] for r in result.layers] == sorted((r["separation"] for r in result.layers), reverse=True)
    assert len(result.sweep) == 4
    big = [r for r in result.sweep if r["alpha"] == 50.0]
    assert all(r["kl"] > r2["kl"] for r in big for r2 in result.sweep if r2["alpha"] == 0.5 and r2["site"] == r["site"])
    if result.site is not None:
        chosen = [r for r in result.sweep if (r["site"], r["alpha"]) == (result.site, result.alpha)][0]
        assert chosen["kl"] <= 0.05
        assert chosen["metric"] == max(r["metric"] for r in result.sweep if r["within_budget"])
    assert "alpha sweep" in str(_render(result))


def _render(obj):
    import io

    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=120).print(obj)
    return buf.getvalue()


def test_measure_effect_reports_the_baseline(lab, tmp_path):
    corpus = tmp_path / "neutral.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    vec = al.steer.DiffMean(progress=False).fit(lab, POS, NEG, sites="blocks.1.resid_post")
    metric = al.steer.ProbeScore(vec.directions["blocks.1.resid_post"], "blocks.2.resid_post", ["a day"])
    effect = al.steer.measure_effect(lab, vec.add(4.0), metric, corpus=str(corpus), seq_len=64, max_tokens=256,
                                     progress=False)
    assert set(effect.baseline) == set(effect.steered) == {"probe_score", "next-token entropy"}
    assert effect.kl_mean > 0 and effect.top1_agreement <= 1
    zero = al.steer.measure_effect(lab, vec.add(0.0), None, corpus=str(corpus), seq_len=64, max_tokens=256,
                                   progress=False)
    assert zero.kl_mean == 0 and zero.top1_agreement == 1
    assert zero.baseline["next-token entropy"] == zero.steered["next-token entropy"]
    assert "unsteered" in _render(effect) and effect.to_dict()["kind"] == "steering_effect"
