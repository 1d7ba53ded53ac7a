"""The wire protocol's JSON Schemas (docs/schema/), for programs written in other languages: the
daemon's own messages hold to them, and the frame headers the daemon refuses, they refuse."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import zmq
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from edge.errors import FrameError
from edge.protocol import HEARTBEAT_TOPIC, Limits, UnreadableMessageError, frame_message, parse_frame
from tests.conftest import ROOT
from tests.edge_helpers import Camera, DaemonProcess, protocol_doc_example, short_ipc_dir

SCHEMAS = ROOT / "docs" / "schema"


def _validators() -> dict[str, Draft202012Validator]:
    """A validator per schema file, their $refs to one another resolved among them."""
    schemas = {path.stem: json.loads(path.read_text()) for path in sorted(SCHEMAS.glob("*.json"))}
    registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas.values())
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)
    return {name: Draft202012Validator(schema, registry=registry) for name, schema in schemas.items()}


VALIDATORS = _validators()


def _errors(kind: str, header: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATORS[kind].iter_errors(header)]


def test_the_schemas_are_the_messages_a_program_reads_or_sends():
    assert sorted(VALIDATORS) == ["control-reply", "control-request", "frame-header", "heartbeat", "result-header"]


IMAGE = np.random.default_rng(0).integers(0, 255, (6, 8, 3), dtype=np.uint8)
GOOD_FRAMES = {
    "raw": frame_message("cam0", 0, IMAGE),
    "grey": frame_message("cam0", 1, IMAGE[..., 0]),
    "raw RGB with a part and a sender": frame_message(
        "line 3/cam ü", 2, IMAGE, part_id="SN-0042", color_order="RGB", sender="box:123"
    ),
    "16-bit Mono12": frame_message("cam0", 3, (IMAGE[..., 0].astype(np.uint16) * 16), pixel_bits=12),
    "jpeg": frame_message("cam0", 4, IMAGE, "jpeg"),
    "png without a clock": frame_message("cam0", 5, IMAGE, "png", ts_ns=0),
    "jpeg without a shape": [
        json.dumps({"v": 1, "camera_id": "c", "frame_id": 6, "ts_ns": 1, "encoding": "jpeg"}).encode(),
        cv2.imencode(".jpg", IMAGE)[1].tobytes(),
    ],
}


@pytest.mark.parametrize("name", GOOD_FRAMES)
def test_a_frame_the_daemon_reads_is_valid(name):
    parts = [bytes(part) for part in GOOD_FRAMES[name]]  # as ZeroMQ delivers them
    parse_frame(parts, Limits())  # the daemon reads it
    assert _errors("frame-header", json.loads(bytes(parts[0]))) == []


# Each a change to a good raw frame's header (6 x 8 x 3, its payload the right size for it).
BAD_HEADERS = {
    "version 2": {"v": 2},
    "no version": {"v": None},
    "empty camera id": {"camera_id": ""},
    "camera id with a newline": {"camera_id": "a\nb"},
    "camera id of 129 characters": {"camera_id": "c" * 129},
    "numeric camera id": {"camera_id": 7},
    "negative frame id": {"frame_id": -1},
    "frame id of 2^63": {"frame_id": 2**63},
    "frame id as text": {"frame_id": "7"},
    "frame id true": {"frame_id": True},
    "negative ts_ns": {"ts_ns": -1},
    "fractional ts_ns": {"ts_ns": 1.5},
    "no ts_ns": {"ts_ns": None},
    "webp": {"encoding": "webp"},
    "float32": {"dtype": "float32"},
    "raw without a dtype": {"dtype": None},
    "raw without a shape": {"shape": None},
    "zero height": {"shape": [0, 8, 3]},
    "two channels": {"shape": [6, 8, 2]},
    "a shape of one side": {"shape": [6]},
    "pixel_bits 7": {"pixel_bits": 7},
    "pixel_bits 17": {"pixel_bits": 17},
    "color order BRG": {"color_order": "BRG"},
    "empty part id": {"part_id": ""},
    "part id with a NUL": {"part_id": "a\x00b"},
    "sender as a list": {"sender": ["box"]},
}


@pytest.mark.parametrize("name", BAD_HEADERS)
def test_a_frame_header_the_daemon_refuses_is_invalid(name):
    parts = frame_message("cam0", 0, IMAGE)
    header = {**json.loads(bytes(parts[0])), **BAD_HEADERS[name]}
    header = {key: value for key, value in header.items() if value is not None}
    with pytest.raises((FrameError, UnreadableMessageError)):
        parse_frame([json.dumps(header).encode(), bytes(parts[1])], Limits())
    assert _errors("frame-header", header), "the schema let it through"


@pytest.mark.parametrize(
    "change",
    [{"dtype": "uint16"}, {"color_order": "RGB"}],
    ids=["a 16-bit jpeg", "an RGB jpeg"],
)
def test_what_only_a_raw_frame_may_say_is_invalid_on_an_encoded_one(change):
    parts = frame_message("cam0", 0, IMAGE, "jpeg")
    header = {**json.loads(bytes(parts[0])), **change}
    with pytest.raises(FrameError):
        parse_frame([json.dumps(header).encode(), bytes(parts[1])], Limits())
    assert _errors("frame-header", header)


def _read_stream(sub: zmq.Socket, results: int, timeout_s: float, beat: bool = True) -> tuple[list[dict], list[dict]]:
    """Up to `results` result headers and the heartbeats that came meanwhile (with `beat`, one at
    least), within `timeout_s`."""
    got, beats = [], []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (len(got) < results or (beat and not beats)):
        if sub.poll(50):
            parts = sub.recv_multipart()
            (beats if parts[0] == HEARTBEAT_TOPIC else got).append(json.loads(parts[1]))
    return got, beats


def _bad(camera: str, frame_id: int, **change) -> list[bytes]:
    parts = frame_message(camera, frame_id, IMAGE)
    return [json.dumps({**json.loads(bytes(parts[0])), **change}).encode(), bytes(parts[1])]


def test_the_daemons_results_and_heartbeats_are_valid(tiny_model, synth_root, tmp_path):
    """Every status (ok, error, dropped), with every extension the daemon writes: frame_shape,
    run and seq, part_id, health, the frame preview; and its heartbeat, with a record."""
    image = cv2.imread(str(next((synth_root / "bracket" / "test" / "good").iterdir())))
    daemon = DaemonProcess(
        tiny_model, "--record", f"sqlite:///{tmp_path / 'line.db'}", "--overload", "drop_oldest", "--max-batch", "1",
        "--set", "edge.queue_size=2", "--set", "edge.publish_frames=true",
    )  # fmt: skip
    with daemon:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.connect(daemon.results)
        time.sleep(0.3)  # the subscription reaches the publisher
        cam = Camera(daemon.frames)
        try:
            one_by_one = [  # each answered before the next: the queue of 2 would drop the oldest
                frame_message("schema", 0, image, part_id="SN-1"),
                frame_message("schema", 1, image, "png"),
                frame_message("schema", 2, cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)),
                _bad("schema", 3, shape=[2, 2, 3]),  # the byte count: an error result
                _bad("schema", 4, part_id="SN-2", encoding="webp"),
            ]
            results = []
            for message in one_by_one:
                cam.send(message)
                results += _read_stream(sub, 1, 30, beat=False)[0]
            burst = 100  # faster than it infers, one frame a batch: some are dropped
            for i in range(burst):
                cam.send(frame_message("burst", i, image))
            burst_results, beats = _read_stream(sub, burst, 60)
            results += burst_results
        finally:
            cam.close()
            sub.close(linger=0)
    statuses = {r["status"] for r in results}
    assert len(results) == 5 + burst and statuses == {"ok", "error", "dropped"}, statuses
    assert any("health" in r and "frame" in r and r.get("part_id") == "SN-1" for r in results)
    for r in results:
        assert _errors("result-header", r) == [], r
    assert beats and beats[-1]["record"] is not None
    for beat in beats:
        assert _errors("heartbeat", beat) == [], beat


def test_a_result_header_that_breaks_the_contract_is_invalid():
    """The schema is not a bag of any keys: a decision without a score, an unknown status, a
    score on an error, a region without its box are each refused."""
    ok = {
        "v": 1, "camera_id": "c", "frame_id": 1, "ts_ns": 5, "status": "ok", "error": None, "score": 0.5,
        "threshold": 0.7, "decision": "pass", "regions": [], "model": {"name": "vqad", "sha256": "ab" * 32},
        "latency_ms": {"queue": 1.0, "infer": 2.0, "total": 3.0}, "batch_size": 1,
        "map": {"shape": [128, 128], "dtype": "uint8", "scale": 0.01},
    }  # fmt: skip
    assert _errors("result-header", ok) == []
    broken = {
        "a decision of maybe": {"decision": "maybe"},
        "status fine": {"status": "fine"},
        "an ok without a score": {"score": None},
        "an error with a score": {"status": "error", "error": "x", "decision": None, "map": None},
        "an error without its reason": {"status": "error", "score": None, "decision": None, "map": None},
        "a region without its height": {"regions": [{"x": 0, "y": 0, "w": 3, "area": 4, "peak": 1.0}]},
        "a model without its hash": {"model": {"name": "vqad"}},
        "a map of 16 bits": {"map": {"shape": [128, 128], "dtype": "uint16", "scale": 0.01}},
        "a run of 8 digits": {"run": "0123abcd"},
    }
    for name, change in broken.items():
        assert _errors("result-header", {**ok, **change}), name
    no_map = dict(ok)
    del no_map["map"]
    assert _errors("result-header", no_map)


def _control(endpoint: str, request: dict) -> dict:
    """One raw request on the control socket, as a program in any language sends it."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(json.dumps(request).encode())
        assert sock.poll(60_000), f"no answer to {request}"
        return json.loads(sock.recv())
    finally:
        sock.close()


def test_the_control_sockets_requests_and_replies_are_valid(tiny_model, tmp_path):
    """Each command as the schema describes it is answered ok, with a reply of that command's
    shape; each request the schema refuses, the daemon refuses too, with a reply of the
    error's shape."""
    control = f"ipc://{short_ipc_dir()}/ctl"
    good = {
        "status": {"command": "status", "by": "mes"},
        "set-threshold": {"command": "set-threshold", "args": {"value": 1.5, "reason": "audit 7"}, "by": "mes"},
        "set-threshold as text": {"command": "set-threshold", "args": {"value": "1.25", "reason": "audit 8"}},
        "master": {"command": "master", "args": {"camera": "cam7", "part_id": "RR-1"}, "by": "ann"},
        "pause": {"command": "pause", "args": {"camera": "cam7"}, "by": "mes"},  # drops RR-1's name
        "resume": {"command": "resume", "args": {"camera": "cam7"}, "by": "mes"},
        "reload": {"command": "reload", "by": "mes"},
    }
    bad = {
        "an unknown command": {"command": "restart"},
        "no command": {"args": {}},
        "a threshold without a reason": {"command": "set-threshold", "args": {"value": 1.5}},
        "a threshold of 0": {"command": "set-threshold", "args": {"value": 0, "reason": "r"}},
        "a threshold as a word": {"command": "set-threshold", "args": {"value": "high", "reason": "r"}},
        "a threshold of 0 as text": {"command": "set-threshold", "args": {"value": " 0.000e5", "reason": "r"}},
        "force as text": {"command": "set-threshold", "args": {"value": 1.5, "reason": "r", "force": "yes"}},
        "a pause without a camera": {"command": "pause", "args": {}},
        "a camera with a newline": {"command": "pause", "args": {"camera": "a\nb"}},
        "a master part without its id": {"command": "master", "args": {"camera": "cam7"}},
    }
    with DaemonProcess(tiny_model, "--control", control, "--record", f"sqlite:///{tmp_path / 'line.db'}",
                       "--set", "edge.master_defective_parts=[RR-*]"):  # fmt: skip
        for name, request in good.items():
            assert _errors("control-request", request) == [], name
            reply = _control(control, request)
            assert reply["ok"] is True, (name, reply)
            assert reply.get("master_dropped") == ("RR-1" if name == "pause" else None), (name, reply)
            shape = {"set-threshold as text": "set-threshold", "resume": "pause"}.get(name, name)
            assert _errors("control-reply", reply) == [], (name, reply)
            assert (
                VALIDATORS["control-reply"]
                .evolve(schema={"$ref": f"control-reply.json#/$defs/{shape}"})
                .is_valid(reply)
            ), (name, reply)
        for name, request in bad.items():
            assert _errors("control-request", request), f"the schema let {name} through"
            reply = _control(control, request)
            assert reply["ok"] is False and _errors("control-reply", reply) == [], (name, reply)
        example = protocol_doc_example("The control socket (pyzmq alone)")  # docs/protocol.md's, run as written
        assert "tcp://127.0.0.1:5557" in example
        run = subprocess.run(
            [sys.executable, "-c", example.replace("tcp://127.0.0.1:5557", control)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        reply = json.loads(run.stdout)
        assert reply["ok"] is True and reply["paused"] == ["cam7"] and reply["changed"] is True, reply
        assert VALIDATORS["control-reply"].evolve(schema={"$ref": "control-reply.json#/$defs/pause"}).is_valid(reply)
