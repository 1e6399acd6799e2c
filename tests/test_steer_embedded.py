"""Steering on the real embedded models: it moves behaviour, and batches equal single prompts."""

import pytest

import actlab as al

pytestmark = [pytest.mark.embedded, pytest.mark.xdist_group("embedded")]


def test_sentiment_vector_moves_vader_both_ways(smollm2):
    pairs = al.data.prompts("sentiment", split="train")
    vec = al.steer.DiffMean(read="mean", progress=False).fit(smollm2, pairs, sites="blocks.6-10.resid_post")
    metric = al.steer.Sentiment(al.data.prompts("neutral").texts[:12], max_new_tokens=24)
    base = metric(smollm2)
    with smollm2.edit(vec.add(1.0)):
        up = metric(smollm2)
    with smollm2.edit((-vec).add(1.0)):
        down = metric(smollm2)
    assert up > base + 0.1 and down < base - 0.1, (down, base, up)


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_batched_steered_generation_equals_single_on_real_models(model, request):
    lab = request.getfixturevalue(model)
    site = f"blocks.{lab.n_layers // 3}.resid_post"
    vec = al.steer.DiffMean(read="mean", progress=False).fit(lab, al.data.prompts("sentiment", split="test"), sites=site)
    prompts = ["My day was", "The weather this morning was quite", "I"]
    with lab.edit(vec.add(2.0)):
        batched = lab.generate(prompts, max_new_tokens=8)
        single = [lab.generate(p, max_new_tokens=8) for p in prompts]
    assert batched == single
    assert batched != lab.generate(prompts, max_new_tokens=8)
