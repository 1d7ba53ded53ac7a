"""The inspection mask: the parts of the frame a package's decision leaves out, set with its
threshold by `vqad calibrate --ignore` / `--mask`, and applied alike by `vqad score`, the daemon
and the calibration itself."""

from __future__ import annotations

import base64
import csv
import json
import logging
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from edge.dashboard.live import LiveFrame
from edge.errors import DataError
from edge.frames import to_model_input
from edge.inspection import (
    InspectionMask,
    StreamMasks,
    check_keep,
    keep_from_image,
    keep_from_rectangles,
    mask_digest,
    parse_rectangle,
)
from edge.package import load_package
from edge.protocol import frame_message
from edge.record import Record
from edge.watch import run_watch
from tests.browser import DashboardProcess, wait_for
from tests.conftest import run_vqad
from tests.edge_helpers import Camera, DaemonProcess, Subscriber, next_heartbeat
from tests.test_schema import _errors


def test_the_mask_zeroes_what_it_leaves_out_and_scores_the_rest():
    keep = np.ones((12, 16), bool)
    keep[2:6, 0:5] = False  # reaches into the 2-pixel margin on the left
    mask = InspectionMask(keep, border=2, sha256="x")
    rng = np.random.default_rng(0)
    maps = rng.uniform(0, 1, (3, 1, 12, 16)).astype(np.float32)
    maps[:, :, 3, 3] = 9.0  # the hottest pixel of every map, where the mask leaves out
    scores = maps[:, 0, 2:-2, 2:-2].reshape(3, -1).max(axis=1)  # the graph's: its inner maximum
    scores[2] = np.nan  # a frame the graph could not score
    masked_maps, masked_scores = mask.apply(maps, scores)
    inner = np.zeros_like(keep)
    inner[2:-2, 2:-2] = True
    expected = maps[:2, 0][:, keep & inner].max(axis=1)
    assert np.array_equal(masked_scores[:2], expected) and (expected < 9.0).all()
    assert np.isnan(masked_scores[2])  # still an error result, not a score of what was left
    assert (masked_maps[:, 0, 2:6, 2:5] == 0).all()  # the ignored inner pixels ...
    assert (masked_maps[:, 0, 2:6, 0:2] == 0).all()  # ... and the margin that repeats them
    assert np.array_equal(masked_maps[:, 0, 8:, :], maps[:, 0, 8:, :])  # the rest as the graph drew it
    assert masked_maps.dtype == np.float32
    whole = InspectionMask(np.ones((12, 16), bool), border=2, sha256="y")
    assert np.array_equal(whole.apply(maps, scores)[1][:2], scores[:2])  # all kept: the graph's own score


def test_a_rectangle_of_the_frame_leaves_out_every_model_pixel_it_touches():
    keep = keep_from_rectangles([(10, 20, 5, 4)], (100, 200), (50, 100))  # frame 200x100 (WxH), model half
    out = np.argwhere(~keep)
    assert out[:, 0].min() == 10 and out[:, 0].max() == 11  # rows 20..23 -> 10..11
    assert out[:, 1].min() == 5 and out[:, 1].max() == 7  # columns 10..14 -> 5..7 (7.5 rounds out)
    clipped = keep_from_rectangles([(190, 90, 50, 50)], (100, 200), (50, 100))  # past the frame's edge
    assert (~clipped).sum() == 5 * 5 and not clipped[45:, 95:].any()
    with pytest.raises(DataError, match="starts outside the 200x100"):
        keep_from_rectangles([(200, 0, 5, 5)], (100, 200), (50, 100))
    for bad, said in (("1,2,3", "X,Y,W,H"), ("1,2,0,4", "above 0"), ("-1,2,3,4", "from 0"), ("a,b,c,d", "X,Y,W,H")):
        with pytest.raises(ValueError, match=said):
            parse_rectangle(bad)


def test_a_mask_image_leaves_out_its_black_and_a_mask_of_nearly_nothing_is_refused(tmp_path):
    image = np.full((90, 120), 255, np.uint8)
    image[:, :30] = 0  # the left quarter left out
    cv2.imwrite(str(tmp_path / "mask.png"), image)
    keep = keep_from_image(tmp_path / "mask.png", (30, 40), [(1024, 1366), (300, 400)])  # 4:3, as drawn
    assert not keep[:, :10].any() and keep[:, 10:].all()
    # Drawn on a frame of another aspect (another camera's, a crop): refused, not stretched.
    with pytest.raises(DataError, match=r"mask.png is 120x90 \(WxH\), not of the aspect of the 1280x720 good"):
        keep_from_image(tmp_path / "mask.png", (30, 40), [(300, 400), (720, 1280)])
    assert check_keep(keep, 1, "--mask m.png").inspected_share == pytest.approx(28 * 29 / (28 * 38))
    nearly_all = np.zeros((30, 40), bool)
    nearly_all[5, 5] = True
    with pytest.raises(DataError, match="leaves 0.1% of the frame inspected"):
        check_keep(nearly_all, 1, "--ignore 0,0,40,30")


def test_a_subscriber_learns_each_mask_from_the_heartbeat_and_hatches_what_it_left_out(caplog):
    keep = np.ones((32, 32), bool)
    keep[:8, :8] = False
    mask = InspectionMask(keep, 1, mask_digest(keep))
    masks, judged = StreamMasks(), {"model": {"name": "m", "sha256": "ab" * 32, "mask_sha256": mask.sha256}}
    assert masks.of(judged) == (False, None)  # before its heartbeat: drawn plain, and again later
    assert masks.of({"model": {"name": "m", "sha256": "ab" * 32}}) == (True, None)  # the whole frame judged
    masks.learn({"inspection": {"mask_sha256": mask.sha256, "inspected_share": 0.9, "mask_png": mask.png_base64}})
    known, learnt = masks.of(judged)
    assert known and np.array_equal(learnt, keep)
    header = {**judged, "camera_id": "c", "frame_id": 1, "status": "ok", "score": 2.0, "decision": "fail",
              "threshold": 1.0, "map": {"shape": [32, 32], "dtype": "uint8", "scale": 0.01}}  # fmt: skip
    frame = np.full((32, 32, 3), 200, np.uint8)
    jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
    plain, hatched = (
        LiveFrame(header, bytes(32 * 32), jpeg, 0.0, 0.0),
        LiveFrame(header, bytes(32 * 32), jpeg, 0.0, 0.0),
    )
    assert plain.picture_jpeg(StreamMasks()) is not None and plain._picture is None  # not kept: drawn again
    picture = cv2.imdecode(np.frombuffer(hatched.picture_jpeg(masks), np.uint8), cv2.IMREAD_COLOR).astype(int)
    assert picture[1:7, 1:7].mean() < 140 < picture[12:, 12:].mean()  # left out: darkened and hatched
    unreadable = "cd" * 32
    with caplog.at_level(logging.WARNING, "edge.inspection"):
        masks.learn({"inspection": {"mask_sha256": unreadable, "inspected_share": 0.5, "mask_png": "not a PNG"}})
        masks.learn({"inspection": {"mask_sha256": unreadable, "inspected_share": 0.5, "mask_png": "not a PNG"}})
    assert [r.getMessage() for r in caplog.records] == [
        "a heartbeat's inspection mask cdcdcdcdcdcd… is not a PNG: its results are drawn without it"
    ]
    known, learnt = masks.of({"model": {"mask_sha256": unreadable}})
    assert known and learnt.all()


def test_vqad_watch_draws_a_fail_once_the_heartbeat_with_its_mask_has_come(tmp_path):
    """A reader just connected (or a reload) gets results before the heartbeat that carries their
    mask: their pictures wait for it, a few seconds at most, rather than being saved unhatched."""
    from edge.watch import _Outputs

    keep = np.ones((32, 32), bool)
    keep[:, :8] = False  # the left quarter left out
    mask = InspectionMask(keep, 1, mask_digest(keep))
    model = {"name": "m", "sha256": "ab" * 32, "mask_sha256": mask.sha256}
    header = {"camera_id": "c", "frame_id": 1, "status": "ok", "score": 2.0, "decision": "fail", "threshold": 1.0,
              "model": model}  # fmt: skip
    jpeg = cv2.imencode(".jpg", np.full((32, 32, 3), 200, np.uint8))[1].tobytes()
    outputs, folder = _Outputs(None, None, tmp_path / "watched"), tmp_path / "watched"
    outputs.write("a line", header, np.zeros((32, 32), np.float32), jpeg)
    assert not list(folder.glob("*.png"))  # waiting for its mask
    outputs.heartbeat(
        {"inspection": {"mask_sha256": mask.sha256, "inspected_share": 0.75, "mask_png": mask.png_base64}}
    )
    (saved,) = folder.glob("c_00000001*.png")
    picture = cv2.imread(str(saved)).astype(int)
    h, w = picture.shape[:2]
    assert picture[h // 2 :, : w // 5].mean() < 140 < picture[h // 2 :, w // 2 :].mean()  # hatched where left out
    never = {**header, "frame_id": 2, "model": {**model, "mask_sha256": "cd" * 32}}  # no heartbeat carries it
    outputs.write("a line", never, np.zeros((32, 32), np.float32), jpeg)
    assert not list(folder.glob("c_00000002*.png"))
    outputs.close()  # the reader stops: nothing it took is lost, drawn unhatched
    (unhatched,) = folder.glob("c_00000002*.png")
    assert cv2.imread(str(unhatched)).astype(int)[h // 2 :, : w // 5].mean() > 140


def _peak_rectangle(graph_map: np.ndarray, border: int) -> tuple[int, int, int, int]:
    """An 8 x 8 rectangle of a 64-pixel frame (X,Y,W,H) around the peak of the 32-pixel map's
    scored pixels: where the frame's score comes from."""
    inner = graph_map[border:-border, border:-border]
    py, px = np.unravel_index(int(np.argmax(inner)), inner.shape)
    return int(min(max(2 * (px + border) - 4, 0), 56)), int(min(max(2 * (py + border) - 4, 0), 56)), 8, 8


def _json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def _scored(model: Path, image: Path) -> dict:
    proc = run_vqad("score", model, image, "--format", "json")
    return json.loads(proc.stdout)[0]


def test_a_package_calibrated_with_a_rectangle_left_out_decides_without_it_offline_and_on_the_line(
    tiny_model, synth_root, line_good, tmp_path
):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    image = sorted((synth_root / "bracket" / "test").glob("[!g]*/*.png"))[0]  # a defect image
    frame = cv2.imread(str(image), cv2.IMREAD_COLOR)
    session = ort.InferenceSession(str(model / "model.onnx"), providers=["CPUExecutionProvider"])
    maps, scores = session.run(None, {"frames": to_model_input(frame, 32, 3)[None]})  # the graph's own
    graph_map, graph_score = maps[0, 0], scores[0]
    x, y, w, h = _peak_rectangle(graph_map, load_package(model).meta["scoring"]["border"])
    proc = run_vqad("calibrate", model, line_good, "--ignore", f"{x},{y},{w},{h}")
    pkg = load_package(model)
    inspection = pkg.meta["inspection"]
    assert inspection["rectangles"] == [[x, y, w, h]] and inspection["frame"] == [64, 64]
    assert pkg.files[inspection["file"]] == pkg.meta["threshold"]["inspection"]["mask_sha256"]
    assert "of the frame judged" in proc.stdout and (model / "inspection.png").is_file()
    keep = cv2.imread(str(model / inspection["file"]), cv2.IMREAD_GRAYSCALE) > 0  # 32x32, the model's size
    assert not keep[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2].any() and keep.sum() == 32 * 32 - w * h // 4
    border = pkg.meta["scoring"]["border"]
    scored = keep.copy()
    scored[:border], scored[-border:], scored[:, :border], scored[:, -border:] = False, False, False, False
    expected = float(graph_map[scored].max())
    assert expected < float(graph_score)  # the frame's peak is left out
    result = _scored(model, image)
    assert result["score"] == pytest.approx(expected, rel=1e-5)
    compared = run_vqad("score", tiny_model, image, "--against", model)  # a new export beside the one in service
    assert f"{tiny_model} judges the whole frame, {model} {inspection['inspected_share']:.1%} of the frame" in (
        compared.stderr
    )
    checked = run_vqad("serve", model, "--check", "--set", f"edge.state_dir={tmp_path / 'check'}").stdout
    assert f"its inspection mask's sha256 verified: {inspection['inspected_share']:.1%} of the frame judged" in checked
    card = run_vqad("info", model).stdout
    assert f"rectangles X,Y,W,H {x},{y},{w},{h} of 64x64 (WxH) frames left out" in card
    assert f"mask       {inspection['file']}" in card and "verified" in card

    url = f"sqlite:///{tmp_path / 'line.db'}"
    uniform = np.full((64, 64, 3), 200, np.uint8)  # every judged pixel over a threshold of 1e-9: all red
    args = ("--record", url, "--threshold", "1e-9", "--set", "edge.publish_frames=true")
    with DaemonProcess(model, *args) as daemon:  # as `vqad score` decides
        sub, cam = Subscriber(daemon.results), Camera(daemon.frames)
        watched = tmp_path / "watched"  # `vqad watch --save-dir`'s pictures of the fails
        watch = threading.Thread(target=run_watch, args=(daemon.results,), daemon=True,
                                 kwargs={"save_dir": watched, "count": 2, "timeout_s": 30, "quiet": True})  # fmt: skip
        watch.start()
        page = DashboardProcess("--results", daemon.results, log_path=tmp_path / "dashboard.log").start()
        try:
            assert wait_for(lambda: _json(page.url + "/api/summary")["daemon"]["heartbeat_age_s"] is not None, 10)
            summary_inspection = _json(page.url + "/api/summary")["daemon"]["inspection"]
            time.sleep(1.5)  # a heartbeat interval: the watch has its heartbeat, and the mask in it, too
            cam.send(frame_message("cam0", 1, frame, "raw"))
            cam.send(frame_message("cam0", 2, uniform, "raw"))
            got = sub.collect(2, timeout=30)
            rows = wait_for(lambda: Record(url).results(camera="cam0", frame_id=2), timeout=30)
            assert wait_for(lambda: _json(page.url + "/api/summary")["cameras"].get("cam0", {}).get("frames") == 2, 10)
            with urllib.request.urlopen(page.url + "/api/image/cam0/2/overlay", timeout=10) as answer:
                live = cv2.imdecode(np.frombuffer(answer.read(), np.uint8), cv2.IMREAD_COLOR)  # the page's picture
            watch.join(30)
        finally:
            page.stop()
            cam.close()
            sub.close()
        beat = next_heartbeat(daemon.results)
    assert len(got) == 2 and rows, daemon.log_text()
    given = {"rectangles": [[x, y, w, h]], "frame": [64, 64]}  # how it was given: a command adding one repeats it
    assert beat["inspection"] == {"mask_sha256": pkg.files[inspection["file"]], "inspected_share": pytest.approx(
        inspection["inspected_share"], abs=1e-4), "mask_png": beat["inspection"]["mask_png"],
        "given": given}  # fmt: skip
    assert "mask_png" not in summary_inspection and summary_inspection["given"] == given, summary_inspection
    # The heartbeat carries the mask itself, for a subscriber's pictures: the package's.
    carried = cv2.imdecode(np.frombuffer(base64.b64decode(beat["inspection"]["mask_png"]), np.uint8), 0)
    assert np.array_equal(carried, cv2.imread(str(model / inspection["file"]), cv2.IMREAD_GRAYSCALE))
    assert _errors("heartbeat", beat) == []
    assert beat["model_dir"] == str(model)  # where vqad calibrate sets its mask, as the page's dialog says
    assert f"judging {inspection['inspected_share']:.1%} of the frame (inspection mask)" in daemon.log_text()
    line, line_map = got[0]  # the map decoded, (32, 32) float32
    assert line["score"] == pytest.approx(result["score"], rel=1e-5)
    assert line["model"]["mask_sha256"] == pkg.files[inspection["file"]]  # what decided it, in each result
    # And in each row of the record: an audit reads the model, threshold and mask that decided it.
    recorded = Record(url).results(camera="cam0")
    assert {r["mask_sha256"] for r in recorded} == {pkg.files[inspection["file"]]}
    assert all(r["model"] == line["model"] for r in recorded)  # as the stream names it
    as_csv = list(csv.DictReader(run_vqad("records", url, "--format", "csv").stdout.splitlines()))
    assert {r["mask_sha256"] for r in as_csv} == {pkg.files[inspection["file"]]}
    table = run_vqad("records", url).stdout.splitlines()[1:3]
    assert all(f" {pkg.files['model.onnx'][:12]}+mask " in row for row in table), table
    assert not line_map[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2].any()
    # An operator reviewing the reject sees what was not judged: the record's overlay darkens and
    # hatches it, where the map is zero, while the heat colours the rest.
    overlay = cv2.imread(rows[0]["evidence_overlay"]).astype(int)  # (64, 64, 3) BGR
    oy, ox = (44 if y < 32 else 4), (44 if x < 32 else 4)
    inside, outside = overlay[y + 2 : y + 6, x + 2 : x + 6], overlay[oy : oy + 16, ox : ox + 16]
    chroma = lambda px: (px.max(axis=2) - px.min(axis=2)).mean()  # noqa: E731
    assert chroma(inside) < 15 and 70 < inside.mean() < 140, inside.mean(axis=(0, 1))  # grey, darkened, hatched
    assert chroma(outside) > 60
    # And so do the page's live picture, at the stream's model size (a 32 x 32 JPEG), and `vqad
    # watch --save-dir`'s, labelled and so enlarged, from the mask the heartbeat carried.
    (saved,) = [cv2.imread(str(p)).astype(int) for p in watched.glob("cam0_00000002*.png")]
    for picture in (live.astype(int), saved):
        at = picture.shape[0] / 64  # picture pixels a frame pixel
        inside = picture[round((y + 2) * at) : round((y + 6) * at), round((x + 2) * at) : round((x + 6) * at)]
        outside = picture[round(oy * at) : round((oy + 16) * at), round(ox * at) : round((ox + 16) * at)]
        assert chroma(inside) < 30 and inside.mean() < 140 and chroma(outside) > 60, (at, inside.mean(axis=(0, 1)))

    run_vqad("calibrate", model, line_good, "--inspect-all")  # the whole frame judged again
    pkg = load_package(model)
    assert "inspection" not in pkg.meta and not list(model.glob("inspect_mask-*.png"))
    assert pkg.meta["threshold"]["inspection"] == {"mask_sha256": None, "inspected_share": 1.0}
    assert _scored(model, image)["score"] == pytest.approx(float(graph_score), rel=1e-5)


def test_an_altered_mask_a_run_and_two_masks_at_once_are_refused(tiny_model, tiny_run, line_good, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    both = run_vqad("calibrate", model, line_good, "--ignore", "0,0,8,8", "--inspect-all", check=False)
    assert both.returncode == 3 and "give one of them" in both.stderr, both.stderr
    inverted = np.zeros((64, 64), np.uint8)
    inverted[:8, :8] = 255  # drawn the other way round: white where the engineer meant to leave out
    cv2.imwrite(str(tmp_path / "inverted.png"), inverted)
    refused = run_vqad("calibrate", model, line_good, "--mask", tmp_path / "inverted.png", check=False)
    assert refused.returncode == 3 and "of the frame inspected (at least 5%)" in refused.stderr, refused.stderr
    assert "inspection" not in load_package(model).meta and not list(model.glob("inspect_mask-*"))
    cv2.imwrite(str(tmp_path / "wide.png"), np.full((64, 128), 255, np.uint8))  # another camera's frame
    wide = run_vqad("calibrate", model, line_good, "--mask", tmp_path / "wide.png", check=False)
    assert wide.returncode == 3 and "not of the aspect of the 64x64 good images" in wide.stderr, wide.stderr
    cv2.imwrite(str(tmp_path / "mask.png"), 255 - inverted)
    run_vqad("calibrate", model, line_good, "--mask", tmp_path / "mask.png")
    assert load_package(model).meta["inspection"]["image"] == str(tmp_path / "mask.png")
    replacing = run_vqad("calibrate", model, line_good, "--ignore", "0,0,8,8", "--ignore", "56,56,8,8").stdout
    assert len(list(model.glob("inspect_mask-*"))) == 1  # the image's mask removed once replaced
    assert f"it replaces the mask image {tmp_path / 'mask.png'}: what only that one left out is judged again" in (
        replacing
    )
    # `--ignore` sets the whole mask: one more rectangle alone would judge the first two again.
    added = run_vqad("calibrate", model, line_good, "--ignore", "0,56,8,8").stdout
    assert "it replaces the mask that left out X,Y,W,H 0,0,8,8 56,56,8,8 of 64x64 (WxH) frames: what only that one " \
        "left out is judged again (to leave it out too, calibrate again with --ignore 0,0,8,8 --ignore 56,56,8,8 " \
        "beside the new ones)" in added, added  # fmt: skip
    replaced = load_package(model).meta["threshold"]["inspection"]["replaced"]
    assert replaced["rectangles"] == [[0, 0, 8, 8], [56, 56, 8, 8]] and replaced["frame"] == [64, 64]
    same = run_vqad("calibrate", model, line_good, "--ignore", "0,56,8,8").stdout
    assert "it replaces" not in same and "replaced" not in load_package(model).meta["threshold"]["inspection"]
    mask_file = model / load_package(model).meta["inspection"]["file"]
    cv2.imwrite(str(mask_file), np.full((32, 32), 255, np.uint8))  # someone "clears" the mask by hand
    altered = run_vqad("score", model, line_good, check=False)
    assert altered.returncode == 4 and "does not match its sha256" in altered.stderr, altered.stderr
    ran = run_vqad("calibrate", tiny_run, line_good, "--ignore", "0,0,8,8", check=False)
    assert ran.returncode == 3 and "is a training run: an inspection mask is set on the model package" in ran.stderr
    malformed = run_vqad("calibrate", model, line_good, "--ignore", "0,0,8", check=False)
    assert malformed.returncode == 2 and "give X,Y,W,H in the frame's pixels" in malformed.stderr
