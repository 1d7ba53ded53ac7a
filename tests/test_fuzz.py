"""Fuzzing the wire protocol against a real daemon: at least 2,000 generated messages
(more with --soak). Afterwards the daemon is alive, every message with readable ids got an
error result, and the valid frames sent in between got correct results."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.backends.onnxruntime_backend import OnnxRuntimeBackend
from edge.frames import to_model_input
from edge.package import load_package
from edge.protocol import frame_message
from tests.edge_helpers import Camera, DaemonProcess, Subscriber

MESSAGES_PER_EXAMPLE = 25
_ids = itertools.count()


def _hdr(**fields) -> bytes:
    return json.dumps(fields).encode()


def _base(fid: int) -> dict:
    return {"v": 1, "camera_id": "fuzz", "frame_id": fid, "ts_ns": 1, "dtype": "uint8", "encoding": "raw"}


@st.composite
def bad_message(draw):
    """-> (parts, expects_error_result: bool, frame_id or None)."""
    fid = next(_ids)
    kind = draw(
        st.sampled_from(
            [
                "parts",
                "random_header",
                "wrong_types",
                "missing",
                "huge",
                "mismatch",
                "dtype",
                "truncated",
                "non_utf8",
                "nested",
            ]
        )
    )
    h = _base(fid)
    if kind == "parts":
        n = draw(st.sampled_from([1, 3, 4, 7]))
        h["shape"] = [2, 2, 3]
        return [json.dumps(h).encode()] + [draw(st.binary(max_size=16)) for _ in range(n - 1)], True, fid
    if kind == "random_header":
        return [draw(st.binary(min_size=0, max_size=64)).replace(b"{", b"("), b"x"], False, None
    if kind == "wrong_types":
        field = draw(st.sampled_from(["v", "ts_ns", "shape", "encoding", "dtype", "color_order"]))
        h["shape"] = [2, 2, 3]
        h[field] = draw(
            st.one_of(
                st.text(max_size=5),
                st.floats(allow_nan=False),
                st.lists(st.integers(), max_size=4),
                st.booleans(),
                st.none(),
                st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
            )
        )
        if field == "shape" and h[field] in ([2, 2, 3], [2, 2]):
            h[field] = "bad"
        if field == "encoding" and h[field] in ("raw", "jpeg", "png"):
            h[field] = 3
        if field == "dtype" and h[field] in ("uint8", "uint16"):
            h[field] = 8
        if field == "color_order" and h[field] in ("BGR", "RGB"):
            h[field] = "GBR"
        if field == "v" and h[field] == 1:
            h[field] = 2
        return [json.dumps(h).encode(), b"\0" * 12], True, fid
    if kind == "missing":
        drop = draw(st.sampled_from(["camera_id", "frame_id", "v", "ts_ns", "encoding", "shape"]))
        h["shape"] = [2, 2, 3]
        del h[drop]
        return [json.dumps(h).encode(), b"\0" * 12], drop not in ("camera_id", "frame_id"), fid
    if kind == "huge":
        h["shape"] = [draw(st.integers(10**5, 10**9)), draw(st.integers(10**5, 10**9)), 3]
        return [json.dumps(h).encode(), b"\0" * 12], True, fid
    if kind == "mismatch":
        hh, ww = draw(st.integers(1, 16)), draw(st.integers(1, 16))
        h["shape"] = [hh, ww, 3]
        n = draw(st.integers(0, 2000).filter(lambda k: k != hh * ww * 3))
        return [json.dumps(h).encode(), b"\1" * n], True, fid
    if kind == "dtype":
        h["shape"] = [2, 2, 3]
        h["dtype"] = draw(st.sampled_from(["float32", "uint16", "int8", "float64", "", "UINT8"]))
        return [json.dumps(h).encode(), b"\0" * 48], True, fid
    if kind == "truncated":
        enc = draw(st.sampled_from(["jpeg", "png"]))
        image = np.full((24, 24, 3), 100, np.uint8)
        image[::3] = 200
        data = frame_message("x", 0, image, enc)[1]
        cut = draw(st.integers(0, len(data) // 2))
        h["encoding"] = enc
        return [json.dumps(h).encode(), data[:cut]], True, fid
    if kind == "non_utf8":
        return [b'{"v": 1, "camera_id": "\xff\xfe", "frame_id": 3}', b""], False, None
    depth = draw(st.integers(200, 50000))
    return [b'{"a":' * depth + b"1" + b"}" * depth, b""], False, None


def _same_image(frame_id: int, image: np.ndarray) -> list:
    """The reference image as a camera may send it: BGR, BGRx, 16-bit (its counts x 257, whose
    top 8 bits are the image), or RGB saying so. The daemon reads each as the same frame."""
    form = frame_id % 4
    if form == 1:
        return frame_message("fuzz", frame_id, np.dstack([image, np.zeros(image.shape[:2], np.uint8)]))
    if form == 2:
        return frame_message("fuzz", frame_id, image.astype(np.uint16) * 257)
    if form == 3:
        return frame_message("fuzz", frame_id, np.ascontiguousarray(image[:, :, ::-1]), color_order="RGB")
    return frame_message("fuzz", frame_id, image)


@pytest.fixture(scope="module")
def fuzz_daemon(tiny_model):
    daemon = DaemonProcess(tiny_model, "--set", "edge.max_frame_pixels=4000000").start()
    sub = Subscriber(daemon.results)
    cam = Camera(daemon.frames)
    yield daemon, sub, cam
    cam.close()
    sub.close()
    daemon.stop()


@pytest.fixture(scope="module")
def reference(tiny_model):
    pkg = load_package(tiny_model)
    backend = OnnxRuntimeBackend(pkg, {"max_batch": 8})
    image = np.random.default_rng(7).integers(0, 255, (48, 40, 3), dtype=np.uint8)
    _, score = backend.infer(to_model_input(image, pkg.image_size, pkg.channels)[None])
    return image, float(score[0])


def test_fuzzed_messages(fuzz_daemon, reference, request):
    daemon, sub, cam = fuzz_daemon
    image, ref_score = reference
    examples = 400 if request.config.getoption("--soak") else 80  # x 25 messages: 2,000 in CI

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(bad_message(), min_size=MESSAGES_PER_EXAMPLE, max_size=MESSAGES_PER_EXAMPLE))
    def run(messages):
        sent[0] += len(messages)
        expected_errors = set()
        valid_ids = set()
        for i, (parts, expects_error, fid) in enumerate(messages):
            cam.send(parts)
            if expects_error:
                expected_errors.add(fid)
            if i % 8 == 0:  # a valid frame in between, in one of the raw forms of the same image
                good_id = next(_ids)
                cam.send(_same_image(good_id, image))
                valid_ids.add(good_id)
        results = sub.collect(len(expected_errors) + len(valid_ids), timeout=30)
        got = {h["frame_id"]: h for h, _ in results}
        assert len(got) == len(results), "a frame got two results"
        assert set(got) == expected_errors | valid_ids
        for fid in expected_errors:
            assert got[fid]["status"] == "error" and got[fid]["error"]
        for fid in valid_ids:
            assert got[fid]["status"] == "ok"
            assert got[fid]["score"] == pytest.approx(ref_score, rel=1e-5, abs=1e-6)

    sent = [0]
    run()
    assert sent[0] >= examples * MESSAGES_PER_EXAMPLE  # 2,000 generated messages at least
    assert daemon.alive()
    assert "Traceback" not in daemon.log_text()
