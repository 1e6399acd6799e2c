"""Weighted activation steering with a learned controller.

Hegazy, Elhoushi & Alanwar, "Guiding Giants: Lightweight Controllers for Weighted Activation
Steering in LLMs", arXiv 2505.20309. A small network reads the prompt's last-token activations
at `read_sites` and predicts a global scale s ∈ (0, 1) and per-layer weights w_l ∈ (0, 1); every
steered site l then gets Δh_l = alpha · s · w_l · d_l, with d_l the refusal direction there.

Training (on cached activations of harmful = 1 and harmless = 0 prompts): s is fitted to the
label by binary cross-entropy; w_l to label · q_l, where q_l ∈ [0, 1] is how well the direction
separates the two classes at layer l (its standardised gap, divided by the largest). The paper
does not pin this target down; this is our concrete choice, and it is recorded in the artifact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actlab.artifacts import load_artifact, save_artifact
from actlab.data.prompts import ContrastivePairs
from actlab.engine.context import Positions
from actlab.errors import ActlabError
from actlab.steer.extract import contrastive_texts
from actlab.steer.gating import GatedAdd, SequenceGate
from actlab.engine.reading import read_activations
from actlab.steer.search import separation
from actlab.steer.vector import SteeringVector

KIND = "steering_controller"


class ControllerNet(nn.Module):
    """Standardise → Linear → GELU → (scale head, layer-weight head), both through a sigmoid."""

    def __init__(self, d_in: int, n_layers: int, hidden: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(d_in))
        self.register_buffer("std", torch.ones(d_in))
        self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU())
        self.scale_head = nn.Linear(hidden, 1)
        self.weight_head = nn.Linear(hidden, n_layers)

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body((x - self.mean) / self.std)
        return self.scale_head(h).squeeze(-1), self.weight_head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, 1 + n_layers]: column 0 = s, then s · w_l for each steered layer."""
        s_logit, w_logit = self.logits(x)
        s = torch.sigmoid(s_logit)
        return torch.cat([s[:, None], s[:, None] * torch.sigmoid(w_logit)], dim=1)


@dataclass
class SteeringController:
    """Estimator: `fit(lab, harmful_vs_harmless_pairs, direction)` → `WeightedSteering`."""

    read_sites: str | Sequence[str] = "blocks.8.resid_post"
    alpha: float = 1.0
    hidden: int = 32
    epochs: int = 300
    lr: float = 1e-2
    weight_decay: float = 1e-3
    seed: int = 0
    batch_size: int = 16
    progress: bool = True

    def fit(self, lab, positive: ContrastivePairs | Sequence[str], negative: Sequence[str] | None = None, *,
            direction: SteeringVector) -> "WeightedSteering":
        direction.check(lab)
        pos_texts, neg_texts, data = contrastive_texts(lab, positive, negative)
        read_names, steer_names = lab.sites(self.read_sites), direction.sites
        deepest_read = max(lab.site(s).order for s in read_names)
        if any(lab.site(s).order < deepest_read for s in steer_names):
            raise ActlabError("the controller's read sites must come before every steered site")
        acts, _ = read_activations(lab, pos_texts + neg_texts, sorted(set(read_names + steer_names)),
                                   "last", self.batch_size, self.progress)
        n = len(pos_texts)
        x = torch.cat([acts[s] for s in read_names], dim=1)
        y = torch.cat([torch.ones(n), torch.zeros(len(neg_texts))])
        quality = torch.tensor([max(separation(acts[s][:n], acts[s][n:], direction.directions[s])[0], 0.0)
                                for s in steer_names])
        quality = quality / quality.max().clamp_min(1e-12)
        net = self._train(x, y, quality)
        return WeightedSteering(net, read_names, direction, self.alpha, lab.fingerprint.to_dict(),
                                {"hidden": self.hidden, "epochs": self.epochs, "lr": self.lr,
                                 "weight_target": "label * normalised layer separation",
                                 "layer_quality": quality.tolist()}, data)

    def _train(self, x: torch.Tensor, y: torch.Tensor, quality: torch.Tensor) -> ControllerNet:
        torch.manual_seed(self.seed)
        net = ControllerNet(x.shape[1], len(quality), self.hidden)
        net.mean.copy_(x.mean(0))
        net.std.copy_(x.std(0).clamp_min(1e-3))
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        bce = nn.functional.binary_cross_entropy_with_logits
        target_w = y[:, None] * quality[None, :]
        with torch.enable_grad():
            for _ in range(self.epochs):
                opt.zero_grad()
                s_logit, w_logit = net.logits(x)
                loss = bce(s_logit, y) + bce(w_logit, target_w)
                loss.backward()
                opt.step()
        return net.eval()


class WeightedSteering:
    """Artifact: controller weights + the direction it modulates; `lab.edit(ws.steering())`."""

    def __init__(self, net: ControllerNet, read_sites: list[str], direction: SteeringVector, alpha: float,
                 fingerprint: dict | None, params: dict[str, Any], data: dict[str, Any]):
        self.net, self.read_sites, self.direction, self.alpha = net, read_sites, direction, alpha
        self.fingerprint, self.params, self.data = fingerprint, params, data

    def predict(self, activations: torch.Tensor) -> torch.Tensor:
        """[batch, 1 + n_layers] (s, then s · w_l) for concatenated read-site activations."""
        with torch.no_grad():
            return self.net(activations.float())

    def steering(self, alpha: float | None = None, tokens: Positions = "all") -> "ControllerEdits":
        return ControllerEdits(self, self.alpha if alpha is None else alpha, tokens)

    def edits(self, lab) -> list[tuple[str, Any]]:
        return self.steering().edits(lab)

    def save(self, path: str | Path) -> Path:
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        tensors.update({f"direction.{s}": d for s, d in self.direction.directions.items()})
        meta = {"fingerprint": self.fingerprint, "read_sites": self.read_sites, "steer_sites": self.direction.sites,
                "alpha": self.alpha, "hidden": self.net.body[0].out_features, "params": self.params, "data": self.data,
                "direction_method": self.direction.method}
        return save_artifact(path, KIND, tensors, meta)

    @classmethod
    def load(cls, path: str | Path) -> "WeightedSteering":
        tensors, meta = load_artifact(path, KIND)
        state = {k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")}
        net = ControllerNet(state["mean"].shape[0], len(meta["steer_sites"]), meta["hidden"])
        net.load_state_dict(state)
        direction = SteeringVector({s: tensors[f"direction.{s}"] for s in meta["steer_sites"]},
                                   meta["fingerprint"], meta["direction_method"])
        return cls(net.eval(), meta["read_sites"], direction, meta["alpha"], meta["fingerprint"],
                   meta["params"], meta["data"])


class ControllerEdits:
    """One gate reader at the read sites, one gated addition per steered site."""

    def __init__(self, steering: WeightedSteering, alpha: float, tokens: Positions):
        self.steering, self.alpha, self.tokens = steering, alpha, tokens

    def edits(self, lab) -> list[tuple[str, Any]]:
        ws = self.steering
        ws.direction.check(lab)
        gate = SequenceGate(ws.predict, ws.read_sites, reduce="last")
        pairs: list[tuple[str, Any]] = gate.readers()
        for k, (site, d) in enumerate(ws.direction.directions.items()):
            pairs.append((site, GatedAdd(direction=self.alpha * d, gate=gate, column=k + 1, positions=self.tokens)))
        return pairs

    def describe(self) -> dict:
        return {"method": "WeightedSteering", "alpha": self.alpha, "tokens": repr(self.tokens),
                "read_sites": self.steering.read_sites, "steer_sites": self.steering.direction.sites}
