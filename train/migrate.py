"""Old checkpoints, upgraded to the current format in one place, version by version.

`upgrade(payload)` takes a checkpoint payload as saved (after its hash was verified) and returns
it in the current format. Each step turns version n into n + 1; a run saved by any earlier
version loads, and scores, as it did when it was saved.

Version 1 -> 2: scoring became a sum of terms with plans saved in the checkpoint's meta. The
v1 scorer kept its settings in `model_config.score` (20 keys) and what calibration decided in
buffers (`scorer.ref_gain`, `scorer.ref_shift`, ...). Both become the v2 scorer's plan; the
template's tensors move under `scorer.terms.template.`; the configs keep what a user decides
(tuned constants moved into code; the train config as saved is kept as `train_config_v1`).

Version 2 -> 3: the scorer's plan gained `peers` (the map in units of its nearest good training
images' scores, train/scoring/peers.py). A v2 run scored without: `peers` off, in its plan and
in its model config.

Version 3 -> 4: the map became fused from maps at several scales (`score.fuse_scales`). A v3
run scored with one map: `fuse_scales` empty in its model config (its plan has no finer maps).
"""

from __future__ import annotations

from typing import Any

import torch

from edge.errors import CheckpointError
from edge.package import newer_vqad_hint

VERSION = 4

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
        raise CheckpointError(f"checkpoint version {version!r} is not one this vqad reads (1..{VERSION})"
                              f"{newer_vqad_hint(version, VERSION)}")  # fmt: skip
    steps = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}
    while payload["version"] < VERSION:
        payload = steps[payload["version"]](payload)
    return payload


# v1 config keys that became constants in code or were removed with their experiment. Those
# that change what a trained model computes must have had their one remaining value.
_V1_MODEL_REMOVED = {
    "codebook": None,  # training only: "loss" codebooks quantise as EMA ones do
    "beta": None,
    "ema_decay": None,
    "kmeans_init": None,
    "kmeans_iters": None,
    "dead_code_threshold": None,
    "cosine": False,
    "restore": "none",
    "restore_radius": None,
    "restore_min_count": None,
}
_V1_TRAIN_REMOVED = (
    "lr",
    "weight_decay",
    "warmup_steps",
    "ssim_loss_weight",
    "anomaly_fraction",
    "discolour_fraction",
    "discolour_restore",
    "anomaly_min_change",
    "anomaly_fills",
    "head_start_fraction",
    "head_loss",
    "head_loss_weight",
)


def _v1_configs(meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The v1 model and train configs less the keys v2 removed; the train config as saved
    stays in meta["train_config_v1"] (how the run was trained)."""
    model = dict(meta["model_config"])
    for key, required in _V1_MODEL_REMOVED.items():
        value = model.pop(key, required)
        if required is not None and value != required:
            raise CheckpointError(f"this run uses model.{key}={value}, which vqad no longer has: retrain it")
    # Runs from before train.head_loss trained the head with the focal loss.
    saved_train = {"head_loss": "focal", **meta["train_config"]}
    train = {k: v for k, v in saved_train.items() if k not in _V1_TRAIN_REMOVED}
    return model, train, saved_train


def _v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    meta, state = dict(payload["meta"]), dict(payload["model"])
    saved, train_cfg, train_cfg_v1 = _v1_configs(meta)
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
    # A v1 "loss" codebook kept its codes as a parameter; both are the same tensor in v2.
    state = {k: v for k, v in state.items() if not k.endswith("code_penalty")}
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
    meta["train_config"], meta["train_config_v1"] = train_cfg, train_cfg_v1
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


def _v2_to_v3(payload: dict[str, Any]) -> dict[str, Any]:
    meta = dict(payload["meta"])
    meta["scoring"] = {**meta["scoring"], "peers": {"k": 0, "size": 0, "dim": 0, "floor": 1.0}}
    model_config = dict(meta["model_config"])
    model_config["score"] = {**model_config["score"], "peers": False}
    meta["model_config"] = model_config
    empty = {"bank": torch.zeros(0, 0), "bank_scores": torch.zeros(0), "center": torch.zeros(0), "scale": torch.ones(0)}
    state = {**payload["model"], **{f"scorer.peers.{name}": t for name, t in empty.items()}}
    return {**payload, "version": 3, "meta": meta, "model": state}


def _v3_to_v4(payload: dict[str, Any]) -> dict[str, Any]:
    meta = dict(payload["meta"])
    model_config = dict(meta["model_config"])
    model_config["score"] = {**model_config["score"], "fuse_scales": []}
    meta["model_config"] = model_config
    return {**payload, "version": 4, "meta": meta}
