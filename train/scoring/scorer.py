"""The anomaly scorer: a weighted sum of terms, a region of interest, and the image score.

(input, reconstruction, head probability) -> (anomaly map (N, 1, H, W), score (N,)). One module,
used by evaluation and traced into the exported ONNX graph, so the line sees the scores
evaluation saw. Which terms, with which weights and plans, is the scorer's plan: built from the
config for a new run, replaced by calibration, and saved with the checkpoint.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from train.scoring.base import GoodImages, Term, TermInputs, plan_from_dict, plan_to_dict
from train.scoring.errors import ErrorPlan, ReconstructionErrors
from train.scoring.learned import HeadPlan, LearnedComparison
from train.scoring.memory import FeatureMemory, MemoryPlan
from train.scoring.peers import PEERS, PeerPlan, PeerScale, descriptor
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
# Fused maps are each divided by the quantile of their good validation scores a 1% target
# threshold takes: the post hoc fusion of docs/decisions.md was measured with it.
UNIT_FRR = 0.01


@dataclass(frozen=True)
class ScorerPlan:
    """terms: (name, weight, the term's plan) in map order; border: pixels at the frame's edge
    left out of the map and the score; peers: the map's unit, its peers' scores (peers.py);
    scale: the map's spatial scale (config score.scale; a fused map's own); unit: the map's
    divisor when maps are fused, its good validation images' 99th-percentile score (1 = none);
    finer: the maps fused with this one by their maximum (config score.fuse_scales)."""

    terms: tuple[tuple[str, float, Any], ...]
    border: int
    peers: PeerPlan = PeerPlan()
    scale: float = 1.0
    unit: float = 1.0
    finer: tuple[ScorerPlan, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "border": self.border,
            "terms": [{"name": n, "weight": w, "plan": plan_to_dict(p)} for n, w, p in self.terms],
            "peers": plan_to_dict(self.peers),
            "scale": self.scale,
            "unit": self.unit,
            "finer": [plan.to_dict() for plan in self.finer],
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ScorerPlan:
        """A saved plan; one saved before maps were fused is one map at scale 1 (its config's
        score.scale, which build_scorer passes on, says where its template calibrates)."""
        terms = []
        for entry in values["terms"]:
            if entry["name"] not in TERMS:
                raise ValueError(f"scoring plan: unknown term {entry['name']!r}; known: {sorted(TERMS)}")
            plan = plan_from_dict(TERMS[entry["name"]].Plan, entry["plan"], f"scoring term {entry['name']}")
            terms.append((entry["name"], float(entry["weight"]), plan))
        peers = plan_from_dict(PeerPlan, values["peers"], "scoring peers")
        finer = tuple(cls.from_dict(v) for v in values.get("finer", []))
        scale, unit = float(values.get("scale", 1.0)), float(values.get("unit", 1.0))
        return cls(tuple(terms), int(values["border"]), peers, scale, unit, finer)


def initial_plan(
    terms: tuple[str, ...],
    errors: tuple[str, ...],
    border: int,
    size: tuple[int, int],
    peers: bool = False,
    scale: float = 1.0,
    fuse: tuple[float, ...] = (),
) -> ScorerPlan:
    """The plan of a new, uncalibrated scorer: the config's terms with the tuned constants scaled
    to the input size (`size` (H, W); the constants were tuned at 128 px) and by `scale` (the
    config's score.scale), with `peers` the map in units of its PEERS nearest good training
    images' scores, and fused with a map at each factor in `fuse` (score.fuse_scales) of `scale`."""
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
    finer = tuple(initial_plan(terms, errors, border, size, peers, scale * f) for f in fuse)
    return ScorerPlan(
        tuple((name, WEIGHTS[name], plans[name]) for name in terms),
        border,
        PeerPlan(PEERS if peers else 0),
        scale,
        finer=finer,
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
    margin filled from the nearest pixel inside; score = the max inside. With finer maps, the
    map is the maximum of each map over its unit, and the score that of each score."""

    def __init__(
        self, plan: ScorerPlan, channels: int, size: tuple[int, int], template: TemplateSettings | None = None
    ):
        """template: what the golden template's calibration chooses from (default: the tuned
        constants at the plan's scale); the ablation benchmark varies it."""
        super().__init__()
        self.channels, self.size = channels, size
        self.template_settings = template or template_settings(size, plan.scale)
        self.weights: dict[str, float] = {}
        self.terms = nn.ModuleDict()
        self.border, self.scale, self.unit = plan.border, plan.scale, plan.unit
        for name, weight, term_plan in plan.terms:
            self.terms[name] = self._build(name, term_plan)
            self.weights[name] = weight
        self.peers = PeerScale(plan.peers)
        self.finer = nn.ModuleList(AnomalyScorer(p, channels, size) for p in plan.finer)

    def _build(self, name: str, plan: Any) -> Term:
        if name == GoldenTemplate.name:
            return GoldenTemplate(plan, self.channels, self.size, self.border, self.template_settings)
        return TERMS[name](plan, self.channels, self.size, self.border)

    @property
    def plan(self) -> ScorerPlan:
        terms = tuple((n, self.weights[n], t.plan) for n, t in self.terms.items())
        finer = tuple(f.plan for f in self.finer)
        return ScorerPlan(terms, self.border, self.peers.plan, self.scale, self.unit, finer)

    def maps(self) -> list[AnomalyScorer]:
        """This map's scorer and those of the maps fused with it, coarsest first."""
        return [self, *self.finer]

    @property
    def needs_head(self) -> bool:
        return any(term.needs_head for m in self.maps() for term in m.active_terms())

    @property
    def needs_features(self) -> bool:
        return any(term.needs_features for m in self.maps() for term in m.active_terms())

    def active_terms(self) -> list[Term]:
        """The terms that enter this map (a weight of 0 leaves a term out of the graph too)."""
        return [term for name, term in self.terms.items() if self.weights[name] > 0]

    @torch.no_grad()
    def calibrate(self, good: GoodImages) -> ScorerPlan:
        """Calibrate every term of every map on good images (a term may choose its weight,
        plan.weight), then each map's peers; with finer maps, each map's unit on the validation
        images."""
        for m in self.maps():
            for name, term in m.terms.items():
                plan = term.calibrate(good)
                if hasattr(plan, "weight"):
                    m.weights[name] = plan.weight
        self._calibrate_peers(good)
        self.unit = 1.0
        if self.finer:
            self._calibrate_units(good)
        return self.plan

    def _calibrate_peers(self, good: GoodImages) -> None:
        """Each map's peers, from one pass of the model over the good training images: their
        descriptors, and each map's scores without peers."""
        peered = [m for m in self.maps() if m.peers.plan.k > 0]
        if not peered:
            return
        if good.outputs is None:
            raise ValueError("scoring by peers needs the model's outputs on the training images")
        for m in peered:
            m.peers.plan = PeerPlan(m.peers.plan.k)  # not fitted: the terms' scores alone
        descs: list[torch.Tensor] = []
        scores: list[list[torch.Tensor]] = [[] for _ in peered]
        for x in good.train():
            recon, prob, features, latents = good.outputs(x)
            descs.append(descriptor(latents))  # (B, 2D)
            shared: dict[Hashable, torch.Tensor] = {}
            for i, m in enumerate(peered):
                scores[i].append(m.single_map(x, recon, prob, features, latents, shared)[1])
        desc = torch.cat(descs)
        for m, s in zip(peered, scores, strict=True):
            m.peers.fit(desc, torch.cat(s))

    def _calibrate_units(self, good: GoodImages) -> None:
        """Each map's unit: the 99th-percentile ("higher") score of the good validation images,
        the quantile the threshold takes at a 1% target, so that 1 is where each map alone would
        set it and no map's tail decides the fused one's."""
        if good.outputs is None:
            raise ValueError("fusing maps needs the model's outputs on the validation images")
        scores: list[list[torch.Tensor]] = [[] for _ in self.maps()]
        for x in good.val_batches():
            recon, prob, features, latents = good.outputs(x)
            shared = {}
            for i, m in enumerate(self.maps()):
                scores[i].append(m.single_map(x, recon, prob, features, latents, shared)[1])
        for m, s in zip(self.maps(), scores, strict=True):
            unit = float(torch.quantile(torch.cat(s).double(), 1.0 - UNIT_FRR, interpolation="higher"))
            m.unit = max(unit, 1e-12)

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
        shared: dict[Hashable, torch.Tensor] = {}  # what the maps' terms share (base.computed_once)
        anomaly_map, score = self.single_map(x, recon, head_prob, features, latents, shared)
        if not self.finer:
            return anomaly_map, score
        anomaly_map, score = anomaly_map / self.unit, score / self.unit
        for finer in self.finer:
            m, s = finer.single_map(x, recon, head_prob, features, latents, shared)
            anomaly_map = torch.maximum(anomaly_map, m / finer.unit)  # (N, 1, H, W)
            score = torch.maximum(score, s / finer.unit)  # (N,)
        return anomaly_map, score

    def single_map(
        self,
        x: torch.Tensor,
        recon: torch.Tensor,
        head_prob: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        shared: dict[Hashable, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This map alone, without the finer ones and its unit: (map (N, 1, H, W), score (N,)).
        shared: what other maps' terms computed in the same call, on the same inputs."""
        anomaly_map = None
        inputs = TermInputs(x, recon, head_prob, features, shared)
        for name, term in self.terms.items():
            weight = self.weights[name]
            if weight <= 0:
                continue
            part = term(inputs)
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
        """What model.json says of the scoring: each term's weight, unit and plan; the border;
        with fused maps, each map's scale and unit."""
        peers = self.peers.plan
        described = {
            "border": self.border,
            "reduce": "max",
            "scale": self.scale,
            "terms": [{"name": n, "weight": self.weights[n], **t.describe()} for n, t in self.terms.items()],
            "unit": (
                f"the mean score of the frame's {peers.k} nearest good training images (at least {peers.floor:.4g})"
                if peers.k > 0
                else "the terms' own"
            ),
            "peers": plan_to_dict(peers),
        }
        if self.finer:
            described["fused"] = {
                "how": "the maximum of each map over its unit, its good validation images' 99th-percentile score",
                "units": [m.unit for m in self.maps()],
                "finer": [m.describe() for m in self.finer],
            }
        return described
