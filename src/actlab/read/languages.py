"""Latent language of the logit lens on translation prompts, and the word list it runs on.

Wendler et al., "Do Llamas Work in English? On the Latent Language of Multilingual
Transformers", arXiv 2402.10588: on few-shot translation prompts between two non-English
languages, the logit lens of Llama-2's middle layers puts more probability on the English word
than on the target word ("the latent language is English"). Zhong et al., "Beyond English-Centric
LLMs: What Language Do Multilingual Language Models Think in?", arXiv 2408.10811: models with much
non-English pre-training (Swallow, LLM-jp) think in two latent languages, English and the one
most related to the target.

Per prompt, per layer, we read the lens probability of the first token of the concept's word in
English, in the source and in the target language (the first token as it follows the prompt's
opening quote). As in Wendler et al., a concept counts only where those three first tokens differ.

`WORDS` was written for this project from common dictionary knowledge (no dataset is available
offline): 60 concrete nouns in English, French, German, Spanish, Italian, Chinese and Japanese.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from actlab.errors import ActlabError, did_you_mean
from actlab.eval.results import plain_text
from actlab.eval.common import fingerprint
from actlab.read.lens import layer_labels, residuals, unembed

LANGUAGES = {"en": "English", "fr": "Français", "de": "Deutsch", "es": "Español", "it": "Italiano",
             "zh": "中文", "ja": "日本語"}
CODES = tuple(LANGUAGES)
FLOOR = 0.01  # a language "leads" a layer only from this lens probability on

_TABLE = """
water eau Wasser agua acqua 水 水
fire feu Feuer fuego fuoco 火 火
sun soleil Sonne sol sole 太阳 太陽
moon lune Mond luna luna 月亮 月
star étoile Stern estrella stella 星星 星
tree arbre Baum árbol albero 树 木
flower fleur Blume flor fiore 花 花
book livre Buch libro libro 书 本
house maison Haus casa casa 房子 家
dog chien Hund perro cane 狗 犬
cat chat Katze gato gatto 猫 猫
bird oiseau Vogel pájaro uccello 鸟 鳥
fish poisson Fisch pez pesce 鱼 魚
horse cheval Pferd caballo cavallo 马 馬
cow vache Kuh vaca mucca 牛 牛
apple pomme Apfel manzana mela 苹果 りんご
bread pain Brot pan pane 面包 パン
milk lait Milch leche latte 牛奶 牛乳
egg œuf Ei huevo uovo 鸡蛋 卵
salt sel Salz sal sale 盐 塩
mountain montagne Berg montaña montagna 山 山
river rivière Fluss río fiume 河 川
sea mer Meer mar mare 海 海
snow neige Schnee nieve neve 雪 雪
rain pluie Regen lluvia pioggia 雨 雨
wind vent Wind viento vento 风 風
cloud nuage Wolke nube nuvola 云 雲
stone pierre Stein piedra pietra 石头 石
gold or Gold oro oro 金 金
iron fer Eisen hierro ferro 铁 鉄
door porte Tür puerta porta 门 ドア
window fenêtre Fenster ventana finestra 窗户 窓
table table Tisch mesa tavolo 桌子 テーブル
chair chaise Stuhl silla sedia 椅子 椅子
bed lit Bett cama letto 床 ベッド
key clé Schlüssel llave chiave 钥匙 鍵
car voiture Auto coche macchina 汽车 車
ship navire Schiff barco nave 船 船
road route Straße carretera strada 路 道
city ville Stadt ciudad città 城市 都市
village village Dorf pueblo villaggio 村庄 村
king roi König rey re 国王 王
child enfant Kind niño bambino 孩子 子供
woman femme Frau mujer donna 女人 女性
man homme Mann hombre uomo 男人 男性
friend ami Freund amigo amico 朋友 友達
heart cœur Herz corazón cuore 心 心臓
hand main Hand mano mano 手 手
eye œil Auge ojo occhio 眼睛 目
head tête Kopf cabeza testa 头 頭
mouth bouche Mund boca bocca 嘴 口
blood sang Blut sangre sangue 血 血
night nuit Nacht noche notte 夜晚 夜
day jour Tag día giorno 白天 日
year année Jahr año anno 年 年
song chanson Lied canción canzone 歌 歌
money argent Geld dinero soldi 钱 お金
school école Schule escuela scuola 学校 学校
church église Kirche iglesia chiesa 教堂 教会
garden jardin Garten jardín giardino 花园 庭
"""
WORDS: list[dict[str, str]] = [dict(zip(CODES, line.split())) for line in _TABLE.strip().splitlines()]


def _check_language(code: str) -> None:
    if code not in LANGUAGES:
        raise ActlabError(f"unknown language {code!r}{did_you_mean(code, LANGUAGES)}; use one of {', '.join(CODES)}")


def translation_prompts(source: str, target: str, n_shots: int = 4, seed: int = 0) -> list[tuple[dict[str, str], str]]:
    """(concept, prompt) for every concept: `n_shots` demonstrations of other concepts, then
    `{Source}: "{word}" - {Target}: "` (the format of Wendler et al.)."""
    _check_language(source)
    _check_language(target)
    if source == target:
        raise ActlabError(f"source and target language are both {source!r}")
    if not 0 <= n_shots < len(WORDS):
        raise ActlabError(f"n_shots must be between 0 and {len(WORDS) - 1}, not {n_shots}")
    rng = random.Random(seed)
    out = []
    for i, concept in enumerate(WORDS):
        shots = rng.sample([w for j, w in enumerate(WORDS) if j != i], n_shots)
        lines = [f'{LANGUAGES[source]}: "{w[source]}" - {LANGUAGES[target]}: "{w[target]}"' for w in shots]
        lines.append(f'{LANGUAGES[source]}: "{concept[source]}" - {LANGUAGES[target]}: "')
        out.append((concept, "\n".join(lines)))
    return out


def first_token(tokenizer: Any, context: str, word: str) -> int:
    """The first token of `word` as it continues `context` (falls back to the word tokenized alone)."""
    head = tokenizer(context)["input_ids"]
    full = tokenizer(context + word)["input_ids"]
    if full[:len(head)] == head and len(full) > len(head):
        return int(full[len(head)])
    return int(tokenizer(word, add_special_tokens=False)["input_ids"][0])


@dataclass
class PairCurve:
    """Mean lens probability per layer of the English, source and target words for one pair."""

    source: str
    target: str
    n_prompts: int
    n_dropped: int  # concepts whose English / source / target first tokens collide
    prob: dict[str, list[float]]  # role ("en", "source", "target") -> per layer

    @property
    def label(self) -> str:
        return f"{self.source}→{self.target}"


@dataclass
class LatentLanguageResult:
    """Per translation pair, the lens probability of each language's word at every layer."""

    layers: list[str]
    pairs: list[PairCurve]
    n_shots: int
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "latent_language", **asdict(self), "summary": self.summary()}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def summary(self) -> list[dict[str, Any]]:
        """Per pair, over the intermediate layers (every row but the last): where the English word
        peaks; the layers where it is ahead of both the source and the target word, and those where it
        is ahead of the target (counted only from probability `FLOOR` on, so noise does not count)."""
        out = []
        inner = range(len(self.layers) - 1)
        for c in self.pairs:
            en, src, tgt = c.prob["en"], c.prob["source"], c.prob["target"]
            peak = max(inner, key=en.__getitem__)
            out.append({"pair": c.label, "peak_en_layer": self.layers[peak], "peak_en": en[peak],
                        "peak_source_inner": max(src[i] for i in inner),
                        "peak_target_inner": max(tgt[i] for i in inner),
                        "en_leads": [self.layers[i] for i in inner if en[i] >= FLOOR and en[i] > max(src[i], tgt[i])],
                        "en_above_target": [self.layers[i] for i in inner if en[i] >= FLOOR and en[i] > tgt[i]],
                        "final_target": tgt[-1], "final_en": en[-1], "final_source": src[-1]})
        return out

    def table(self) -> Table:
        table = Table(title=f"latent language ({self.fingerprint.get('name', '?')}): lens probability",
                      title_justify="left")
        table.add_column("layer", justify="right")
        for c in self.pairs:
            for role in ("en", "source", "target"):
                lang = {"en": "en", "source": c.source, "target": c.target}[role]
                table.add_column(f"{c.label}\n{role} ({lang})", justify="right")
        for i, layer in enumerate(self.layers):
            table.add_row(layer, *(f"{c.prob[r][i]:.4f}" for c in self.pairs for r in ("en", "source", "target")))
        return table

    def __rich__(self) -> Table:
        return self.table()

    def __str__(self) -> str:
        return plain_text(self.table(), width=200)

    def plot(self, path: str | Path) -> Path:
        """One panel per pair: probability of the English, source and target word against depth."""
        from matplotlib.figure import Figure  # no pyplot: the caller's backend and figures stay untouched

        fig = Figure(figsize=(3.6 * len(self.pairs), 3.2))
        axes = fig.subplots(1, len(self.pairs), sharey=True, squeeze=False)
        x = range(len(self.layers))
        for ax, c in zip(axes[0], self.pairs):
            ax.plot(x, c.prob["en"], label="en", color="tab:blue")
            ax.plot(x, c.prob["source"], label=f"source ({c.source})", color="tab:gray", linestyle="--")
            ax.plot(x, c.prob["target"], label=f"target ({c.target})", color="tab:orange")
            ax.set_title(f"{c.label} ({c.n_prompts} prompts)")
            ax.set_xlabel("layer (0 = embed)")
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("lens probability")
        fig.suptitle(f"latent language, {self.fingerprint.get('name', '?')}")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=120)
        return path


DEFAULT_PAIRS = (("fr", "de"), ("de", "it"), ("es", "fr"))


def latent_language(lab: Any, pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS, n_shots: int = 4, seed: int = 0,
                    batch_size: int = 8, progress: bool = True) -> LatentLanguageResult:
    """Logit-lens probability of the English, source and target word at the last prompt token,
    per layer, averaged over the concepts of `WORDS` (translation prompts `source → target`)."""
    if lab.tokenizer is None:
        raise ActlabError("latent_language needs a lab with a tokenizer")
    if not pairs:
        raise ActlabError("give at least one (source, target) pair")
    curves = []
    for source, target in pairs:
        if "en" in (source, target):
            raise ActlabError(f"pair {source}→{target}: English is the reference language; pick two others")
        kept, ids = [], []
        prompts = translation_prompts(source, target, n_shots, seed)
        for concept, prompt in prompts:
            tokens = [first_token(lab.tokenizer, prompt, concept[lang]) for lang in ("en", source, target)]
            if len(set(tokens)) == 3:
                kept.append(prompt)
                ids.append(tokens)
        if not kept:
            raise ActlabError(f"pair {source}→{target}: every concept's first tokens collide with English")
        resid, _, _ = residuals(lab, kept, "last", batch_size, progress)  # [n, layers + 1, d]
        index = torch.tensor(ids)  # [n, 3]
        prob = torch.stack([unembed(lab, resid[:, depth]).softmax(-1).gather(-1, index.to(lab.device)).cpu()
                            for depth in range(resid.shape[1])], dim=1).mean(0)  # [layers + 1, 3]
        curves.append(PairCurve(source, target, len(kept), len(prompts) - len(kept),
                                {role: prob[:, j].tolist() for j, role in enumerate(("en", "source", "target"))}))
    return LatentLanguageResult(layer_labels(lab), curves, n_shots, fingerprint(lab))
