"""The anomaly scorer: a weighted sum of terms, a region of interest, and the image score.

(input, reconstruction, head probability) -> (anomaly map (N, 1, H, W), score (N,)). One module,
used by evaluation and traced into the exported ONNX graph, so the line sees the scores
evaluation saw. Which terms, with which weights and plans, is the scorer's plan: built from the
config for a new run, replaced by calibration, and saved with the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from train.scoring.base import GoodImages, Term, plan_from_dict, plan_to_dict
from train.scoring.errors import ErrorPlan, ReconstructionErrors
from train.scoring.learned import HeadPlan, LearnedComparison
from train.scoring.memory import FeatureMemory, MemoryPlan
from train.scoring.peers import PEERS, PeerPlan, PeerScale
from train.scoring.template import GoldenTemplate, TemplatePlan, TemplateSettings

# The terms by name: adding one is a module and a line here.
TERMS: dict[str, type[Term]] = {
    LearnedComparison.name: LearnedComparison,
    ReconstructionErrors.name: ReconstructionErrors,
    GoldenTemplate.name: GoldenTemplate,
    FeatureMemory.name: FeatureMemory,
}
# Each term's weight in the map, before calibration may choose another (the template does).
# Chosen on independent draws of `vqad synth`: the head's probability at 1, the balanced error
# map at 0.1 (it adds what the head misses without its noise on textures); docs/decisions.md.
WEIGHTS = {"head": 1.0, "errors": 0.1, "template": 1.0, "memory": 1.0}
# The smoothing of the error map and of the head's probability, pixels at a 128-px input.
ERROR_SIGMA = 2.0
HEAD_SIGMA = 1.0


@dataclass(frozen=True)
class ScorerPlan:
    """terms: (name, weight, the term's plan) in map order; border: pixels at the frame's edge
    left out of the map and the score; peers: the map's unit, its peers' scores (peers.py)."""

    terms: tuple[tuple[str, float, Any], ...]
    border: int
    peers: PeerPlan = PeerPlan()

    def to_dict(self) -> dict[str, Any]:
        return {
            "border": self.border,
            "terms": [{"name": n, "weight": w, "plan": plan_to_dict(p)} for n, w, p in self.terms],
            "peers": plan_to_dict(self.peers),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ScorerPlan:
        terms = []
        for entry in values["terms"]:
            if entry["name"] not in TERMS:
                raise ValueError(f"scoring plan: unknown term {entry['name']!r}; known: {sorted(TERMS)}")
            plan = plan_from_dict(TERMS[entry["name"]].Plan, entry["plan"], f"scoring term {entry['name']}")
            terms.append((entry["name"], float(entry["weight"]), plan))
        peers = plan_from_dict(PeerPlan, values["peers"], "scoring peers")
        return cls(tuple(terms), int(values["border"]), peers)


def initial_plan(
    terms: tuple[str, ...],
    errors: tuple[str, ...],
    border: int,
    size: tuple[int, int],
    peers: bool = False,
    scale: float = 1.0,
) -> ScorerPlan:
    """The plan of a new, uncalibrated scorer: the config's terms with the tuned constants scaled
    to the input size (`size` (H, W); the constants were tuned at 128 px) and by `scale` (the
    config's score.scale), and with `peers` the map in units of its PEERS nearest good training
    images' scores."""
    k = tuned_side(size, scale) / 128.0
    plans = {
        "head": HeadPlan(sigma=HEAD_SIGMA * k),
        "errors": ErrorPlan(
            kinds=errors, weights=(1.0,) * len(errors), scales=(1.0,) * len(errors), sigma=ERROR_SIGMA * k
        ),
        "template": TemplatePlan(sigma=TemplateSettings.for_size(k * 128).sigma),
        "memory": MemoryPlan(sigma=ERROR_SIGMA * k),
    }
    unknown = sorted(set(terms) - set(plans))
    if unknown:
        raise ValueError(f"score.terms: unknown {unknown}; known: {sorted(plans)}")
    return ScorerPlan(
        tuple((name, WEIGHTS[name], plans[name]) for name in terms), border, PeerPlan(PEERS if peers else 0)
    )


def tuned_side(size: tuple[int, int], scale: float = 1.0) -> float:
    """The side, in pixels, of the square input whose tuned constants the map uses: the input's
    geometric mean side times `scale`."""
    return (size[0] * size[1]) ** 0.5 * scale


def template_settings(size: tuple[int, int], scale: float = 1.0) -> TemplateSettings:
    """What the golden template's calibration chooses from, at this input size and map scale."""
    return TemplateSettings.for_size(tuned_side(size, scale))


class AnomalyScorer(nn.Module):
    """map = sum over terms of weight * term(x, recon, head probability), divided by the mean
    score of the frame's peers (when the plan has them), inside the region of interest, its
    margin filled from the nearest pixel inside; score = the max inside."""

    def __init__(
        self, plan: ScorerPlan, channels: int, size: tuple[int, int], template: TemplateSettings | None = None
    ):
        """template: what the golden template's calibration chooses from (default: the tuned
        constants at this size); the ablation benchmark varies it."""
        super().__init__()
        self.channels, self.size, self.template_settings = channels, size, template
        self.weights: dict[str, float] = {}
        self.terms = nn.ModuleDict()
        self.border = plan.border
        for name, weight, term_plan in plan.terms:
            self.terms[name] = self._build(name, term_plan)
            self.weights[name] = weight
        self.peers = PeerScale(plan.peers)

    def _build(self, name: str, plan: Any) -> Term:
        if name == GoldenTemplate.name:
            return GoldenTemplate(plan, self.channels, self.size, self.border, self.template_settings)
        return TERMS[name](plan, self.channels, self.size, self.border)

    @property
    def plan(self) -> ScorerPlan:
        terms = tuple((n, self.weights[n], t.plan) for n, t in self.terms.items())
        return ScorerPlan(terms, self.border, self.peers.plan)

    @property
    def needs_head(self) -> bool:
        return any(term.needs_head for term in self.active_terms())

    @property
    def needs_features(self) -> bool:
        return any(term.needs_features for term in self.active_terms())

    def active_terms(self) -> list[Term]:
        """The terms that enter the map (a weight of 0 leaves a term out of the graph too)."""
        return [term for name, term in self.terms.items() if self.weights[name] > 0]

    @torch.no_grad()
    def calibrate(self, good: GoodImages) -> ScorerPlan:
        """Calibrate every term on good images; a term may choose its weight (plan.weight)."""
        for name, term in self.terms.items():
            plan = term.calibrate(good)
            if hasattr(plan, "weight"):
                self.weights[name] = plan.weight
        if self.peers.plan.k > 0:
            self.peers.plan = PeerPlan(self.peers.plan.k)  # not fitted: the terms' scores alone
            self.peers.calibrate(self._train_scores(good))
        return self.plan

    def _train_scores(self, good: GoodImages):
        """(latents, image scores) of each batch of the good training images."""
        if good.outputs is None:
            raise ValueError("scoring by peers needs the model's outputs on the training images")
        for x in good.train():
            recon, prob, features, latents = good.outputs(x)
            yield latents, self(x, recon, prob, features)[1]

    def forward(
        self,
        x: torch.Tensor,
        recon: torch.Tensor,
        head_prob: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x, recon (N, C, H, W) [0,1]; head_prob (N, 1, H, W); features: the head's coarsest;
        latents: the encoder's output (N, D, h, w), which finds the peers -> (map, score)."""
        anomaly_map = None
        for name, term in self.terms.items():
            weight = self.weights[name]
            if weight <= 0:
                continue
            part = term(x, recon, head_prob, features)
            part = part if weight == 1.0 else weight * part
            anomaly_map = part if anomaly_map is None else anomaly_map + part
        if anomaly_map is None:
            raise ValueError("the scorer has no term with a positive weight")
        if self.peers.active:
            if latents is None:
                raise ValueError("scoring by peers needs the encoder's latents")
            anomaly_map = anomaly_map / self.peers(latents)[:, None, None, None]  # (N, 1, H, W)
        if self.border > 0:
            b = self.border
            inner = anomaly_map[:, :, b:-b, b:-b]  # (N, 1, H - 2b, W - 2b): what is scored
            score = inner.flatten(1).max(dim=1).values  # (N,)
            # The margin shows its nearest scored pixel, so a defect that runs off the frame (a
            # thread across a fabric tile, a crack to the part's edge) is drawn to the edge
            # instead of stopping in a frame of zeros; it still adds nothing to the score.
            return F.pad(inner, (b, b, b, b), mode="replicate"), score
        return anomaly_map, anomaly_map.flatten(1).max(dim=1).values

    def describe(self) -> dict[str, Any]:
        """What model.json says of the scoring: each term's weight, unit and plan; the border."""
        peers = self.peers.plan
        return {
            "border": self.border,
            "reduce": "max",
            "terms": [{"name": n, "weight": self.weights[n], **t.describe()} for n, t in self.terms.items()],
            "unit": (
                f"the mean score of the frame's {peers.k} nearest good training images (at least {peers.floor:.4g})"
                if peers.k > 0
                else "the terms' own"
            ),
            "peers": plan_to_dict(peers),
        }
