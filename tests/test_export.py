import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from edge.frames import InputFormat
from edge.package import load_package, sha256_file
from export.parity import onnx_outputs
from tests.conftest import ROOT, SHARED_TOOLS, run_vqad
from tests.edge_helpers import AS_ON_THE_EDGE
from train.data import load_test_set
from train.pipeline import score_frames
from train.run import load_run


@pytest.fixture(scope="module")
def frames(synth_root):
    return np.stack([s.image for s in load_test_set(synth_root / "bracket", InputFormat(32, 3))])


def test_package_files_and_metadata(tiny_model, tiny_run):
    pkg = load_package(tiny_model)
    meta = pkg.meta
    assert pkg.image_size == (32, 32) and pkg.channels == 3 and pkg.color_order == "BGR"
    assert pkg.threshold == json.loads((tiny_run / "threshold.json").read_text())["value"]
    for name in ("model.onnx", "model_fp16.onnx"):
        assert meta["files"][name] == sha256_file(tiny_model / name)
    assert meta["opset"] <= 17 and meta["versions"]["onnx"] and meta["name"] and meta["version"]
    assert meta["threshold"]["method"] and meta["normalization"]["mean"]
    assert meta["metrics"]["evaluation"]["image_auroc"] is not None
    # model.json describes each term as calibrated: weight, unit and plan, in map order.
    terms = {t["name"]: t for t in meta["scoring"]["terms"]}
    assert list(terms) == meta["scoring"]["config"]["terms"] == ["head", "errors", "template"]
    assert all(t["unit"] and t["weight"] > 0 for t in terms.values())
    assert "rebuilt" not in meta["scoring"]  # the map is the one training calibrated
    template = terms["template"]["plan"]
    assert template["aligned"] and template["alignment"] > 0.5 and template["gain"] > 0
    assert template["shift"] > 0 and template["blob_sigma"] > 0 and template["lighting"]  # all three in the graph
    p = meta["parity"]
    assert p["passed"] and p["fp32_vs_torch"]["decisions_identical"]
    assert p["fp16_vs_fp32"]["map_relative_error"] <= 1e-2 and p["fp16_vs_fp32"]["decision_agreement"] >= 0.99


def test_onnx_fp32_and_fp16_match_pytorch(tiny_model, tiny_run, frames):
    run = load_run(tiny_run)
    _, t_maps, t_scores = score_frames(run.model, frames)
    m32, s32 = onnx_outputs(tiny_model / "model.onnx", frames)
    m16, s16 = onnx_outputs(tiny_model / "model_fp16.onnx", frames)
    assert m32.shape == (len(frames), 1, 32, 32) and m32.dtype == np.float32 and s32.dtype == np.float32
    assert np.abs(m32[:, 0] - t_maps).max() < 1e-4 and np.abs(s32 - t_scores).max() < 1e-4
    rel = np.linalg.norm((m16 - m32).reshape(len(frames), -1), axis=1) / np.linalg.norm(
        m32.reshape(len(frames), -1), axis=1
    )
    assert rel.max() <= 1e-2
    thr = load_package(tiny_model).threshold
    assert ((s16 >= thr) == (s32 >= thr)).mean() >= 0.99


@pytest.mark.parametrize("precision", ["model.onnx", "model_fp16.onnx"])
def test_dynamic_batch_gives_the_same_per_frame_results(tiny_model, frames, precision):
    import onnxruntime as ort

    session = ort.InferenceSession(str(tiny_model / precision), providers=["CPUExecutionProvider"])
    ref_maps, ref_scores = session.run(None, {"frames": frames[:8]})
    for n in (1, 3, 8):
        maps, scores = session.run(None, {"frames": frames[:n]})
        assert maps.shape[0] == n
        np.testing.assert_allclose(maps, ref_maps[:n], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(scores, ref_scores[:n], rtol=1e-4, atol=1e-5)


def test_graph_is_valid_and_tensorrt_parsable(tiny_model):
    for name in ("model.onnx", "model_fp16.onnx"):
        model = onnx.load(str(tiny_model / name))
        onnx.checker.check_model(model, full_check=True)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) <= 17
        assert not {"NonZero", "Unique", "Constant"} & {n.op_type for n in model.graph.node}
        inp = model.graph.input[0].type.tensor_type
        assert inp.elem_type == onnx.TensorProto.UINT8 and inp.shape.dim[0].dim_param
        init_names = {i.name for i in model.graph.initializer}
        for node in model.graph.node:  # axes inputs of reductions come from initializers
            if node.op_type.startswith("Reduce") and len(node.input) > 1:
                assert node.input[1] in init_names
        tool = SHARED_TOOLS / "onnx_trt_check.py"
        if not tool.is_file():
            pytest.skip("../shared/tools/onnx_trt_check.py is not beside this checkout")
        proc = subprocess.run([sys.executable, str(tool), str(tiny_model / name)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_fp16_graph_keeps_the_fp32_islands(tiny_model):
    model = onnx.load(str(tiny_model / "model_fp16.onnx"))
    types = {i.name: i.data_type for i in model.graph.initializer}
    conv_weights = [
        n.input[1]
        for n in model.graph.node
        if n.op_type in ("Conv", "ConvTranspose")
        and n.name.startswith(("/decoder/", "/head/"))
        and not n.name.startswith(("/head/enc1/", "/head/enc2/", "/head/enc3/"))
    ]
    assert conv_weights and all(types[w] == onnx.TensorProto.FLOAT16 for w in conv_weights)
    # The head's encoder half compares frame and reconstruction and gives the memory its
    # features: FP32.
    head_encoder = [
        n.input[1]
        for n in model.graph.node
        if n.op_type == "Conv" and n.name.startswith(("/head/enc1/", "/head/enc2/", "/head/enc3/"))
    ]
    assert len(head_encoder) == 4 and all(types[w] == onnx.TensorProto.FLOAT for w in head_encoder)
    encoder = [n.input[1] for n in model.graph.node if n.op_type == "Conv" and n.name.startswith("/encoder/")]
    assert encoder and all(types[w] == onnx.TensorProto.FLOAT for w in encoder)  # it decides the codes: FP32
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]  # the VQ distance
    assert matmuls
    inferred = onnx.shape_inference.infer_shapes(model)
    vtypes = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    vtypes.update(types)
    for n in matmuls:
        assert all(vtypes.get(i) == onnx.TensorProto.FLOAT for i in n.input), "VQ distance must be FP32"
    for out in model.graph.output:
        assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_export_refuses_a_run_without_threshold(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "threshold.json").unlink()
    proc = run_vqad("export", run, "--out", tmp_path / "m", check=False)
    assert proc.returncode != 0 and "threshold" in proc.stderr and "vqad eval" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "m").exists()


def test_the_evaluation_is_packaged_wherever_its_report_went_and_not_when_stale(tiny_run, synth_root, tmp_path):
    """`vqad eval RUN DATA --out REPORT` put its figures in REPORT alone, and the export looked for
    them in RUN/eval: a report elsewhere (the demo's, or the export's own hint, `--out REPORT`)
    left model.json without its evaluation. The run now keeps them; those of earlier weights
    are left out."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval", "evaluation.json"))
    run_vqad("eval", run, synth_root / "bracket", "--out", tmp_path / "report")
    run_vqad("export", run, "--out", tmp_path / "m")
    evaluation = load_package(tmp_path / "m").meta["metrics"]["evaluation"]
    measured = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert evaluation["image_auroc"] == measured["image_auroc"] and evaluation["n_images"] == measured["n_images"]
    assert evaluation["report"] == str(tmp_path / "report")
    figures = json.loads((run / "evaluation.json").read_text())
    (run / "evaluation.json").write_text(json.dumps({**figures, "checkpoint_sha256": "0" * 64}))  # other weights
    proc = run_vqad("export", run, "--out", tmp_path / "m2")
    assert load_package(tmp_path / "m2").meta["metrics"]["evaluation"] == {}
    assert "measured the run's weights before they were trained further" in proc.stderr


def test_export_refuses_a_corrupt_checkpoint(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    proc = run_vqad("export", run, "--out", tmp_path / "m", check=False)
    assert proc.returncode != 0 and "checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_export_refuses_to_overwrite_without_force(tiny_model, tiny_run):
    proc = run_vqad("export", tiny_run, "--out", tiny_model, check=False)
    assert proc.returncode != 0 and "--force" in proc.stderr


# A Jetson as docs/deploy.md installs it: `vqad[edge]`, neither torch nor the training code.
WITHOUT_TORCH = AS_ON_THE_EDGE


def test_a_graph_written_to_a_full_disk_names_its_file(tiny_run, tmp_path):
    """The tracer wrote the graph to its file and the disk's refusal named none ("cannot use a
    file or folder (-v shows which)"); the graph is written whole now, its refusal naming the
    file, and nothing of it left. /dev/full answers every write with ENOSPC."""
    import errno

    from export.onnx_graph import export_graph

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    target = tmp_path / "model.onnx"
    target.symlink_to("/dev/full")
    with pytest.raises(OSError) as full:
        export_graph(load_run(tiny_run).model, target, 17)
    assert full.value.errno == errno.ENOSPC and full.value.filename == str(target)
    assert not os.path.lexists(target)
    written = export_graph(load_run(tiny_run).model, tmp_path / "ok.onnx", 17)
    onnx.checker.check_model(onnx.load(str(written)), full_check=True)


def test_tensorrt_modules_import_without_tensorrt_or_torch():
    code = (
        WITHOUT_TORCH
        + "sys.modules['tensorrt'] = None; import export.engine, edge.backends.tensorrt_backend; print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


def test_build_engine_without_tensorrt_says_how_to_get_it(tiny_model):
    code = WITHOUT_TORCH + "sys.modules['tensorrt'] = None; from vqad.cli import main; "
    code += f"sys.exit(main(['build-engine', {str(tiny_model)!r}]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    assert "TensorRT is not installed" in proc.stderr and "JetPack" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_build_engine_checks_a_cached_engine_without_torch(tiny_model, tmp_path):
    """`vqad build-engine` as the shipped unit runs it before each start, on a box with
    `vqad[edge]` alone: a cached engine (on the stand-in runtime, tests/fake_tensorrt.py) is
    kept and checked against ONNX Runtime within the package's FP16 bounds."""
    from edge.backends.tensorrt_backend import find_engine
    from edge.engine_cache import onnx_file_for
    from tests import fake_tensorrt

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    pkg = load_package(model)
    trt, cudart = fake_tensorrt.shared()
    path, _, settings = find_engine(pkg, 4, 1024, trt, cudart)
    fake_tensorrt.write_plan(path, model / onnx_file_for(settings.mode), max_batch=4)
    code = (
        WITHOUT_TORCH
        + f"from vqad.cli import main; sys.exit(main(['build-engine', {str(model)!r}, '--max-batch', '4']))"
    )
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests' / 'fake_gpu'}:{ROOT}")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"engine: {path}" in proc.stdout and "decision agreement 1.000" in proc.stdout
    assert "is cached and valid" in proc.stderr


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0", "11.4.0"])
def test_build_engine_builds_what_each_tensorrt_release_accepts(tiny_model, tmp_path, monkeypatch, caplog, version):
    """The build itself, on the stand-in builder of each release the checker knows
    (tests/fake_tensorrt.py): the network flag, the optimisation profile, the workspace and 8.6's
    FP32 islands as that release requires them, a plan that runs within the FP16 bounds, the
    timing cache kept, and the engine reused until --force."""
    import logging

    from export.engine import build_engine, verify_engine
    from tests import fake_tensorrt

    fake_tensorrt.install(monkeypatch, version)
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    with caplog.at_level(logging.INFO, logger="export.engine"):
        plan = build_engine(model, max_batch=4, workspace_mb=256)
    assert plan.is_file() and (model / "engines" / "timing.cache").is_file()
    pinned = [r.getMessage() for r in caplog.records if "pinned to FP32" in r.getMessage()]
    if version.startswith("8."):  # the FP16 flag on model.onnx, the VQ argmin and scoring pinned
        assert len(pinned) == 1 and int(pinned[0].split(" with ")[1].split()[0]) > 0, pinned
    else:  # model_fp16.onnx strongly typed: its precision is the graph's
        assert not pinned
    checked = verify_engine(model, max_batch=4, workspace_mb=256)
    assert checked["n_frames"] == 4 and checked["decision_agreement"] == 1.0
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="export.engine"):
        assert build_engine(model, max_batch=4, workspace_mb=256) == plan
        assert "is cached and valid" in caplog.text
        build_engine(model, max_batch=4, workspace_mb=256, force=True)
        assert "building" in caplog.text


def test_build_engine_refuses_a_folder_it_cannot_write_before_it_builds(tiny_model, tmp_path, monkeypatch):
    """A package copied onto a read-only root filesystem: the build took its minutes, then failed
    on the write. The refusal comes first (exit 7 in the CLI), naming the engine's path. (A file
    named `engines` stands in for the read-only folder, which root's tests cannot make.)"""
    from export.engine import build_engine
    from tests import fake_tensorrt

    fake_tensorrt.install(monkeypatch, "10.3.0")
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    (model / "engines").write_text("")
    built = []
    monkeypatch.setattr("export.engine._parsed_network", lambda *args: built.append(args))
    with pytest.raises(OSError, match=r"engines/.*\.plan"):
        build_engine(model, max_batch=4, workspace_mb=256)
    assert not built


def _has_trt_gpu() -> bool:
    try:
        import tensorrt  # noqa: F401

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.tensorrt
@pytest.mark.skipif(not _has_trt_gpu(), reason="needs tensorrt and an NVIDIA GPU")
def test_tensorrt_engine_matches_onnxruntime(tiny_model, frames, tmp_path):
    from edge.backends import create_backend
    from export.engine import build_engine

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    plan = build_engine(model, max_batch=8, workspace_mb=512)
    assert plan.is_file()
    backend = create_backend("tensorrt", load_package(model), {"max_batch": 8})
    maps, scores = backend.infer(frames[:8])
    m32, s32 = onnx_outputs(model / "model.onnx", frames[:8])
    rel = np.linalg.norm((maps - m32).reshape(8, -1), axis=1) / np.linalg.norm(m32.reshape(8, -1), axis=1)
    assert rel.max() <= 1e-2
    backend.close()


def test_tensorrt86_fp16_layers_are_those_of_model_fp16(tiny_model):
    """On TensorRT 8.6 the engine builder keeps FP16 only for the layers that model_fp16.onnx
    runs in FP16: the decoder and the head, but not the head's encoder half."""
    from edge.precision import runs_in_fp16

    fp32_graph = onnx.load(str(tiny_model / "model.onnx"))
    fp16_graph = onnx.load(str(tiny_model / "model_fp16.onnx"))
    weights_fp16 = {i.name for i in fp16_graph.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    in_fp16 = {
        n.name for n in fp16_graph.graph.node if n.op_type in ("Conv", "ConvTranspose") and n.input[1] in weights_fp16
    }
    convs = [n.name for n in fp32_graph.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert any(n.startswith("/decoder/") for n in in_fp16) and any(n.startswith("/head/") for n in in_fp16)
    for layer in ("enc1", "enc2", "enc3"):
        assert any(n.startswith(f"/head/{layer}/") for n in convs), layer
        assert not any(n.startswith(f"/head/{layer}/") for n in in_fp16), layer
    assert {n for n in convs if runs_in_fp16(n)} == in_fp16


def test_half_precision_head_keeps_its_encoder_half_exactly():
    """The head's encoder half compares frame and reconstruction; its FP32 weights are kept
    bit for bit (not rounded through FP16), and every other layer becomes FP16."""
    import torch

    from train.head import ComparisonHead, half_precision

    head = ComparisonHead(3, 8)
    encoder = ("enc1.", "enc2.", "enc3.")
    before = {k: v.clone() for k, v in head.state_dict().items() if k.startswith(encoder)}
    half_precision(head)
    for k, v in head.state_dict().items():
        if k.startswith(encoder):
            assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    assert all(p.dtype == torch.float16 for n, p in head.named_parameters() if not n.startswith(encoder))
    out, features = head(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16))
    assert out.dtype == torch.float16 and out.shape == (2, 1, 16, 16)
    assert features.dtype == torch.float32 and features.shape == (2, 32, 4, 4)


def test_parity_names_the_fp16_bound_that_failed():
    from export.parity import ParityError, compare

    maps = np.random.default_rng(0).random((4, 1, 16, 16)).astype(np.float32) + 1.0
    scores = maps.reshape(4, -1).max(axis=1)
    exact = (maps, scores)
    assert compare(exact, exact, exact, 2.0, 1e-3, 1e-2, 0.99)["passed"]
    with pytest.raises(ParityError, match=r"FP16 map relative error 0\.0[3-9]\d* > 0\.01"):
        compare(exact, exact, (maps * 1.05, scores), 2.0, 1e-3, 1e-2, 0.99)
    flipped = np.where(np.arange(4) < 2, 2.5, 1.5).astype(np.float32)  # 2 of 4 decisions turned
    with pytest.raises(ParityError, match=r"FP16 decision agreement 0\.500 < 0\.99"):
        compare((maps, flipped), (maps, flipped), (maps, np.full(4, 1.5, np.float32)), 2.0, 1e-3, 1e-2, 0.99)


def test_parity_relaxes_only_images_whose_tied_codes_explain_a_difference():
    """One image whose map moved around one latent cell (a code flip at an FP32 tie) passes
    when the proof knows that image holds a tie, and fails otherwise; a larger change fails
    even then; an image that holds a tie but matches is still held to the strict bound."""
    from export.parity import ParityError, compare

    rng = np.random.default_rng(0)
    maps = rng.random((4, 1, 32, 32)).astype(np.float32) + 1.0
    scores = maps.reshape(4, -1).max(axis=1)
    flipped = maps.copy()
    flipped[2, 0, 8:12, 8:12] += 0.05  # one 4x4 cell's footprint: relative error ~2e-3
    tie = np.array([False, True, True, False])  # image 1 holds a tie too, but matches: still strict
    figures = compare((maps, scores), (flipped, scores), (flipped, scores), 2.0, 1e-3, 1e-2, 0.99, near_tie=tie)
    fig = figures["fp32_vs_torch"]
    assert figures["passed"] and fig["near_tie_images"] == 2 and fig["relaxed_images"] == 1
    assert 1e-3 < fig["relaxed_map_relative_error"] < 1e-2 and fig["map_max_abs_error"] == 0.0
    nudged = flipped.copy()
    nudged[1] += 0.01  # over the strict bound where a tie is known: relaxed too, and still within FP16's
    assert compare((maps, scores), (nudged, scores), (nudged, scores), 2.0, 1e-3, 1e-2, 0.99, near_tie=tie)["passed"]
    with pytest.raises(ParityError, match="FP32 ONNX differs"):  # the same, with no tie there
        compare(
            (maps, scores), (nudged, scores), (nudged, scores), 2.0, 1e-3, 1e-2, 0.99, near_tie=np.eye(4, dtype=bool)[2]
        )
    with pytest.raises(ParityError, match="FP32 ONNX differs"):
        compare((maps, scores), (flipped, scores), (flipped, scores), 2.0, 1e-3, 1e-2, 0.99)
    broken = maps.copy()
    broken[2] += 0.5
    with pytest.raises(ParityError, match="tied codes"):
        compare((maps, scores), (broken, scores), (broken, scores), 2.0, 1e-3, 1e-2, 0.99, near_tie=tie)
    # A near-empty map (a blank tile, every cell tied) whose rounding is 5% of itself but 0.25%
    # of the threshold passes; the same error against a map at the threshold's level fails.
    blank = np.full((2, 1, 32, 32), 0.1, np.float32)
    blank_scores = blank.reshape(2, -1).max(axis=1)
    moved = blank * 1.05
    both = np.ones(2, bool)
    assert compare((blank, blank_scores), (moved, blank_scores), (moved, blank_scores), 2.0, 1e-3, 1e-2, 0.99, both)[
        "passed"
    ]
    with pytest.raises(ParityError, match="tied codes"):
        compare(
            (blank * 20, blank_scores),
            (moved * 20, blank_scores),
            (moved * 20, blank_scores),
            2.0,
            1e-3,
            1e-2,
            0.99,
            both,
        )


def test_parity_verdict_does_not_depend_on_the_maps_units():
    """The same outputs in other units (balanced scoring puts thresholds near 30, raw L2 near
    0.01) get the same verdict: the FP32 bound is a fraction of the threshold, not an absolute
    number, so a balanced model is not refused for float32 rounding at its own scale."""
    from export.parity import ParityError, compare

    rng = np.random.default_rng(0)
    maps = rng.random((6, 1, 16, 16)).astype(np.float32)
    scores = maps.reshape(6, -1).max(axis=1)
    threshold = float(np.median(scores))

    def verdict(scale: float, rel_noise: float) -> bool:
        ref = (maps * scale, scores * scale)
        noisy = (ref[0] * (1 + rel_noise), ref[1] * (1 + rel_noise))
        try:
            compare(ref, noisy, noisy, threshold * scale, 1e-3, 1e-2, 0.99)
        except ParityError:
            return False
        return True

    for scale in (0.01, 1.0, 3000.0):
        assert verdict(scale, 1e-5), scale  # rounding-sized differences pass at every scale
        assert not verdict(scale, 5e-3), scale  # a real discrepancy fails at every scale


def test_two_level_model_trains_exports_and_parses(synth_root, tmp_path, frames):
    """model.levels=2 (VQ-VAE-2): both codebooks' argmin run in FP32 in both graphs, and the
    graphs agree with PyTorch."""
    from tests.conftest import TINY_MODEL, TINY_TRAIN

    run, out = tmp_path / "run", tmp_path / "model"
    two_levels = ["--set", "model.levels=2"]
    run_vqad("train", synth_root / "bracket", "--out", run, "--steps", "10", *TINY_MODEL, *TINY_TRAIN, *two_levels)
    run_vqad("eval", run, synth_root / "bracket", "--out", run / "eval")
    loaded = load_run(run)
    assert loaded.model.vqvae.top is not None and bool(loaded.model.vqvae.top.quantizer.initted)
    run_vqad("export", run, "--out", out)
    _, t_maps, t_scores = score_frames(loaded.model, frames)
    m32, s32 = onnx_outputs(out / "model.onnx", frames)
    assert np.abs(m32[:, 0] - t_maps).max() < 1e-4 and np.abs(s32 - t_scores).max() < 1e-4
    for name in ("model.onnx", "model_fp16.onnx"):
        graph = onnx.load(str(out / name)).graph
        argmins = [n for n in graph.node if n.op_type == "ArgMin"]
        argmaxes = [n for n in graph.node if n.op_type == "ArgMax"]
        # One ArgMin per codebook. Each map's registration picks its shift by an ArgMin, or with
        # the lighting fitted by an ArgMax (the shift whose template and gain plane keep the most
        # of the image).
        templates = [m.terms["template"].plan for m in loaded.model.scorer.maps()]
        assert len(templates) == 1 + len(loaded.model_cfg.score.fuse_scales)
        assert len(argmins) == 2 + sum(t.shift > 0 and not t.lighting for t in templates), name
        assert len(argmaxes) == sum(t.lighting for t in templates), name
    tool = SHARED_TOOLS / "onnx_trt_check.py"
    if tool.is_file():
        for name in ("model.onnx", "model_fp16.onnx"):
            proc = subprocess.run([sys.executable, str(tool), str(out / name)], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_memory_term_exports_in_fp32_and_parses(synth_root, tmp_path, frames):
    """score.terms with the feature memory: its distance is a matrix product and a min on FP32
    features in both graphs, within the parity bounds, and the graphs parse in TensorRT."""
    from tests.conftest import TINY_MODEL, TINY_TRAIN

    run, out = tmp_path / "run", tmp_path / "model"
    terms = ["--set", "model.score.terms=head,errors,memory"]
    run_vqad("train", synth_root / "weave", "--out", run, "--steps", "10", *TINY_MODEL, *TINY_TRAIN, *terms)
    run_vqad("eval", run, synth_root / "weave", "--out", run / "eval", "--no-pictures")
    run_vqad("export", run, "--out", out)
    meta = load_package(out).meta
    memory = next(t for t in meta["scoring"]["terms"] if t["name"] == "memory")
    assert memory["plan"]["size"] > 0 and memory["plan"]["gain"] > 0 and meta["parity"]["passed"]
    for name in ("model.onnx", "model_fp16.onnx"):
        graph = onnx.load(str(out / name)).graph
        assert any(n.op_type == "ReduceMin" for n in graph.node), name
        bank = [i for i in graph.initializer if tuple(i.dims) == (memory["plan"]["size"], memory["plan"]["dim"])]
        assert bank and all(i.data_type == onnx.TensorProto.FLOAT for i in bank), name
    tool = SHARED_TOOLS / "onnx_trt_check.py"
    if tool.is_file():
        for name in ("model.onnx", "model_fp16.onnx"):
            proc = subprocess.run([sys.executable, str(tool), str(out / name)], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stdout + proc.stderr
