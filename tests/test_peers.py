"""Scoring by peers: a frame's map in units of the scores of the good training images most like
it; the plan and its tensors travel with the checkpoint; runs saved before it score as before."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from train.checkpoint import load_checkpoint, save_checkpoint
from train.migrate import VERSION, upgrade
from train.model import uint8_nhwc_to_float
from train.run import load_run
from train.scoring import AnomalyScorer, GoodImages, ScorerPlan
from train.scoring.errors import ErrorPlan
from train.scoring.peers import FLOOR_SHARE, PEERS, PeerPlan, PeerScale


def _latents(kind: str, n: int, seed: int) -> torch.Tensor:
    """(n, 8, 4, 4) encoder latents of one kind of image: "plain" near 0, "edge" offset and spread."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 8, 4, 4, generator=g)
    return 0.1 * z if kind == "plain" else 3.0 + z


def _bank(k: int = 3) -> PeerScale:
    """Peers among 12 plain good images scoring 0.1 and 6 of a rare kind scoring 1.0."""
    peers = PeerScale(PeerPlan(k))
    pairs = [(_latents("plain", 12, 0), torch.full((12,), 0.1)), (_latents("edge", 6, 1), torch.full((6,), 1.0))]
    peers.calibrate(pairs)
    return peers


def test_a_frame_is_measured_against_the_scores_of_its_own_kind():
    peers = _bank()
    assert peers.active and peers.plan.size == 18 and peers.plan.dim == 16
    assert torch.allclose(peers(_latents("edge", 4, 2)), torch.full((4,), 1.0))
    assert torch.allclose(peers(_latents("plain", 4, 3)), torch.full((4,), 0.1))


def test_the_denominator_never_falls_below_its_floor():
    peers = PeerScale(PeerPlan(2))
    peers.calibrate([(_latents("plain", 5, 0), torch.tensor([0.0, 0.0, 0.2, 0.4, 0.4]))])
    assert peers.plan.floor == pytest.approx(FLOOR_SHARE * 0.2)  # the median is 0.2
    assert float(peers(_latents("plain", 3, 1)).min()) >= peers.plan.floor


def _scorer(peers: int) -> AnomalyScorer:
    plan = ErrorPlan(kinds=("l2",), weights=(1.0,), scales=(1.0,), sigma=0.0)
    return AnomalyScorer(ScorerPlan((("errors", 1.0, plan),), 0, PeerPlan(peers)), 3, (16, 16))


def test_the_scorer_divides_the_map_by_the_peers_and_calibrates_them_on_training_images():
    g = torch.Generator().manual_seed(0)
    plain, edge = torch.rand(8, 3, 16, 16, generator=g), torch.rand(4, 3, 16, 16, generator=g)
    # A rare kind reconstructs ten times worse: its good images score ten times higher.
    recon = {id(plain): (plain + 0.02).clamp(0, 1), id(edge): (edge + 0.2).clamp(0, 1)}
    latent = {id(plain): _latents("plain", 8, 0), id(edge): _latents("edge", 4, 1)}

    def outputs(x):
        return recon[id(x)], None, None, latent[id(x)]

    good = GoodImages(train=lambda: [plain, edge], val=plain, val_recon=recon[id(plain)], outputs=outputs)
    scorer, plain_scorer = _scorer(3), _scorer(0)  # 3 peers: fewer than either kind holds
    scorer.calibrate(good)
    plain_scorer.calibrate(good)
    assert scorer.plan.peers.size == 12 and plain_scorer.plan.peers == PeerPlan()
    # The terms calibrate as they would without peers; the map is the plain one over the peers'.
    raw_map, raw = plain_scorer(edge, recon[id(edge)])
    amap, score = scorer(edge, recon[id(edge)], latents=latent[id(edge)])
    denominator = scorer.peers(latent[id(edge)])
    assert torch.allclose(amap, raw_map / denominator[:, None, None, None]) and torch.allclose(score, raw / denominator)
    # Good images of the rare kind now score as the plain ones do (about 1 on their peers).
    plain_score = scorer(plain, recon[id(plain)], latents=latent[id(plain)])[1]
    assert float(raw.min()) > 5 * float(plain_scorer(plain, recon[id(plain)])[1].max())
    assert abs(float(score.mean()) - float(plain_score.mean())) < 0.5 * float(plain_score.mean())
    with pytest.raises(ValueError, match="latents"):
        scorer(edge, recon[id(edge)])
    # The plan travels: a scorer built from it and loaded with the tensors scores the same.
    copy_ = AnomalyScorer(ScorerPlan.from_dict(json.loads(json.dumps(scorer.plan.to_dict()))), 3, (16, 16))
    copy_.load_state_dict(scorer.state_dict())
    assert torch.equal(copy_(edge, recon[id(edge)], latents=latent[id(edge)])[1], score)
    assert "nearest good training images" in scorer.describe()["unit"]


def test_a_run_saved_before_peers_loads_without_them_and_scores_as_it_did(tiny_run, tmp_path):
    """The tiny run, written back in the format before peers (version 2), upgrades with peers off
    in its plan and config, and scores as its own scorer does with peers switched off."""
    saved = load_checkpoint(tiny_run / "checkpoint.pt")
    assert saved["meta"]["scoring"]["peers"]["k"] == PEERS and saved["meta"]["model_config"]["score"]["peers"]
    meta = copy.deepcopy(saved["meta"])
    for key in ("peers", "finer", "unit", "scale"):  # what version 2 had not
        del meta["scoring"][key]
    for key in ("peers", "fuse_scales"):
        del meta["model_config"]["score"][key]
    state = {k: v for k, v in saved["model"].items() if not k.startswith(("scorer.peers.", "scorer.finer."))}
    upgraded = upgrade({"version": 2, "meta": meta, "model": state})
    assert upgraded["version"] == VERSION and upgraded["meta"]["scoring"]["peers"]["k"] == 0
    assert upgraded["meta"]["model_config"]["score"]["peers"] is False

    old_run = tmp_path / "old"
    old_run.mkdir()
    for name in ("config.json", "split.json"):
        (old_run / name).write_text((tiny_run / name).read_text())
    save_checkpoint(old_run / "checkpoint.pt", upgraded["model"], upgraded["meta"], None)
    old, new = load_run(old_run).model.eval(), load_run(tiny_run).model.eval()
    assert not old.scorer.peers.active and new.scorer.peers.active
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, *new.cfg.image_size, 3), dtype=np.uint8))
    with torch.no_grad():
        _, old_score = old(frames)
        new.scorer.peers.plan = PeerPlan()  # the same weights, scored without peers, one map
        new.scorer.finer, new.scorer.unit = torch.nn.ModuleList(), 1.0
        _, plain_score = new(frames)
    assert torch.equal(old_score, plain_score)


def test_a_run_saved_before_fused_maps_loads_with_one_map_and_scores_as_it_did(tiny_run, tmp_path):
    """The tiny run, written back in the format before fused maps (version 3), upgrades with
    `fuse_scales` empty and scores as its own first map alone."""
    saved = load_checkpoint(tiny_run / "checkpoint.pt")
    assert saved["meta"]["model_config"]["score"]["fuse_scales"] and saved["meta"]["scoring"]["finer"]
    meta = copy.deepcopy(saved["meta"])
    for key in ("finer", "unit", "scale"):  # what version 3 had not
        del meta["scoring"][key]
    del meta["model_config"]["score"]["fuse_scales"]
    state = {k: v for k, v in saved["model"].items() if not k.startswith("scorer.finer.")}
    upgraded = upgrade({"version": 3, "meta": meta, "model": state})
    assert upgraded["version"] == VERSION and upgraded["meta"]["model_config"]["score"]["fuse_scales"] == []

    old_run = tmp_path / "old"
    old_run.mkdir()
    for name in ("config.json", "split.json"):
        (old_run / name).write_text((tiny_run / name).read_text())
    save_checkpoint(old_run / "checkpoint.pt", upgraded["model"], upgraded["meta"], None)
    old, new = load_run(old_run), load_run(tiny_run)
    assert not old.model.scorer.finer and old.model_cfg.score.fuse_scales == ()
    frames = torch.from_numpy(
        np.random.default_rng(0).integers(0, 256, (3, *new.model.cfg.image_size, 3), dtype=np.uint8)
    )
    with torch.no_grad():
        old_map, old_score = old.model(frames)
        x01 = uint8_nhwc_to_float(frames)
        z = new.model.latents(x01)
        recon = new.model.reconstruct(x01, z)
        prob, features = new.model.head_outputs(x01, recon)
        first_map, first_score = new.model.scorer.single_map(x01, recon, prob, features, z)
    assert torch.allclose(old_score, first_score) and torch.allclose(old_map, first_map)


def test_a_checkpoint_or_package_of_a_newer_vqad_names_the_upgrade(tiny_run, tiny_model, tmp_path):
    """A box not upgraded with the training machine meets a newer checkpoint or model.json: the
    refusal says a newer vqad made it, and what to do; a version that is no number does not."""
    from edge.errors import CheckpointError, PackageError
    from edge.package import FORMAT_VERSION, load_package

    saved = load_checkpoint(tiny_run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=rf"version {VERSION + 1} .*; a newer vqad made it: upgrade vqad here$"):
        upgrade({"version": VERSION + 1, "meta": saved["meta"], "model": saved["model"]})
    with pytest.raises(CheckpointError, match=r"version 'x' is not one this vqad reads \(1\.\.\d+\)$"):
        upgrade({"version": "x", "meta": saved["meta"], "model": saved["model"]})
    package = tmp_path / "model"
    shutil.copytree(tiny_model, package)
    meta = json.loads((package / "model.json").read_text())
    for version, told in ((FORMAT_VERSION + 1, True), ("1", False)):
        (package / "model.json").write_text(json.dumps({**meta, "format_version": version}))
        with pytest.raises(PackageError, match=f"format_version {version!r}, expected {FORMAT_VERSION}") as refused:
            load_package(package)
        said = "; a newer vqad made it: upgrade vqad here, or export it with this one"
        assert str(refused.value).endswith(said) is told
