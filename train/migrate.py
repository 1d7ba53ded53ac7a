"""Old checkpoints, upgraded to the current format in one place, version by version.

`upgrade(payload)` takes a checkpoint payload as saved (after its hash was verified) and returns
it in the current format. Each step turns version n into n + 1; a run saved by any earlier
version loads, and scores, as it did when it was saved.

Version 1 -> 2: scoring became a sum of terms with plans saved in the checkpoint's meta. The
v1 scorer kept its settings in `model_config.score` (20 keys) and what calibration decided in
buffers (`scorer.ref_gain`, `scorer.ref_shift`, ...). Both become the v2 scorer's plan; the
template's tensors move under `scorer.terms.template.`; the config keeps what a user decides.
"""

from __future__ import annotations

from typing import Any

import torch

from edge.errors import CheckpointError

VERSION = 2

# What a v1 ScoreConfig field held when a checkpoint did not save it (it did not exist yet),
# as v1's loader filled it in: runs from before each feature scored without it.
_V1_MISSING = {
    "errors": ("gms",),
    "weights": (1.0,),
    "smoothing_sigma": 2.0,
    "reduce": "max",
    "normalize": "none",
    "source": "combined",
    "head_recon_weight": 0.1,
    "border": 4,
    "balance": False,
    "reference_sigmas": (2.0, 8.0),
    "reference_min_alignment": 0.5,
    "reference_blob_sigma": 0.0,
}


def upgrade(payload: dict[str, Any]) -> dict[str, Any]:
    """{'version', 'meta', 'model'} of any saved version -> the current version's."""
    version = payload.get("version")
    if not isinstance(version, int) or not 1 <= version <= VERSION:
        raise CheckpointError(f"checkpoint version {version!r} is not one this vqad reads (1..{VERSION})")
    steps = {1: _v1_to_v2}
    while payload["version"] < VERSION:
        payload = steps[payload["version"]](payload)
    return payload


def _v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    meta, state = dict(payload["meta"]), dict(payload["model"])
    saved = dict(meta["model_config"])
    score = {**_V1_MISSING, "head_smoothing_sigma": saved.get("score", {}).get("smoothing_sigma", 2.0)}
    score = {**score, "reference_aligned_sigmas": saved.get("score", {}).get("reference_sigmas", (2.0, 8.0))}
    score.update(saved.get("score", {}))
    for key, plain in (("normalize", "none"), ("reduce", "max")):
        if score[key] != plain:
            raise CheckpointError(
                f"this run scores with score.{key}={score[key]}, which vqad no longer has: retrain it"
            )
    old = {k[len("scorer.") :]: v for k, v in state.items() if k.startswith("scorer.")}
    state = {k: v for k, v in state.items() if not k.startswith("scorer.")}
    terms: list[dict[str, Any]] = []
    if score["source"] in ("head", "combined"):
        terms.append({"name": "head", "weight": 1.0, "plan": {"sigma": score["head_smoothing_sigma"]}})
    if score["source"] in ("recon", "combined"):
        kinds = list(score["errors"])
        scales = old.get("error_scale", torch.ones(len(kinds))).tolist()
        weight = 1.0 if score["source"] == "recon" else score["head_recon_weight"]
        plan = {"kinds": kinds, "weights": list(score["weights"]), "scales": scales, "sigma": score["smoothing_sigma"]}
        terms.append({"name": "errors", "weight": weight, "plan": plan})
    gain = float(old.get("ref_gain", torch.zeros(())))
    if gain > 0:
        terms.append({"name": "template", "weight": 1.0, "plan": _v1_template_plan(score, old, gain)})
        state["scorer.terms.template.mean"] = old["ref_mean"]
        state["scorer.terms.template.std"] = old["ref_std"]
        if terms[-1]["plan"]["blob_sigma"] > 0:
            state["scorer.terms.template.blob_spectrum"] = old["ref_blob_spectrum"]
    saved["score"] = {"terms": [t["name"] for t in terms], "errors": list(score["errors"]), "border": score["border"]}
    meta["model_config"] = saved
    meta["scoring"] = {"border": score["border"], "terms": terms}
    # Runs from before train.head_loss trained the head with the focal loss.
    meta["train_config"] = {"head_loss": "focal", **meta["train_config"]}
    return {**payload, "version": 2, "meta": meta, "model": state}


def _v1_template_plan(score: dict[str, Any], old: dict[str, torch.Tensor], gain: float) -> dict[str, Any]:
    """The v1 golden template's buffers as a v2 plan: the v1 gain already held the weight."""
    aligned_band = float(old.get("ref_aligned_band", torch.zeros(()))) > 0
    spectrum = old.get("ref_blob_spectrum", torch.zeros(0))
    alignment = float(old.get("ref_alignment", torch.zeros(())))
    return {
        "band": list(score["reference_aligned_sigmas"] if aligned_band else score["reference_sigmas"]),
        "shift": int(old.get("ref_shift", torch.zeros((), dtype=torch.int64))),
        "lighting": bool(float(old.get("ref_lighting", torch.zeros(()))) > 0),
        "blob_sigma": score["reference_blob_sigma"] if spectrum.numel() and bool(spectrum.abs().sum() > 0) else 0.0,
        "sigma": score["smoothing_sigma"],
        "alignment": alignment,
        "aligned": alignment >= score["reference_min_alignment"],
        "weight": 1.0,
        "gain": gain,
    }
