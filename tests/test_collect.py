"""`vqad collect`: a camera's frames saved for training, decoded as the daemon decodes them."""

from __future__ import annotations

import resource
import signal
import subprocess
import time

import cv2
import numpy as np
import pytest

from edge.frames import read_image
from edge.protocol import Limits, frame_message, parse_frame
from edge.transport import free_loopback_port
from tests.browser import wait_for
from tests.conftest import ROOT, VQAD, run_vqad
from tests.edge_helpers import Camera, PipeLines, header


def _collect(out, *args, preexec_fn=None) -> tuple[subprocess.Popen, str]:
    """`vqad collect OUT ARGS` as a process on a free loopback port -> (process, its endpoint)."""
    endpoint = f"tcp://127.0.0.1:{free_loopback_port()}"
    proc = subprocess.Popen([*VQAD, "collect", str(out), "--frames", endpoint, *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec_fn)  # fmt: skip
    return proc, endpoint


def _sent_to_the_end(proc: subprocess.Popen, endpoint: str, messages: list) -> tuple[str, str]:
    """`messages` sent to the collector once it is bound; its (stdout, stderr) once it ends (at
    most 60 s)."""
    try:
        _bound(proc)
        cam = Camera(endpoint)
        for message in messages:
            cam.send(message)
        cam.close()
        return _to_the_end(proc, 60)
    finally:
        proc.kill()


def _files_of_at_most(size: int) -> None:
    """In the child before it runs: no file it writes may pass `size` bytes (EFBIG, "File too
    large"; SIGXFSZ ignored, so that the write fails instead of the process): a disk that fills
    at a frame, without a filesystem of its own."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


def _bound(proc: subprocess.Popen) -> None:
    """Wait until the collector has bound its socket, which a log line says (at most 30 s)."""
    _said(proc, "collecting frames at")


def _log_of(proc: subprocess.Popen) -> PipeLines:
    """The collector's log as read so far: one reader for the process, so that a line read while
    waiting for another is kept."""
    if not hasattr(proc, "log_lines"):
        proc.log_lines = PipeLines(proc.stderr)
    return proc.log_lines


def _said(proc: subprocess.Popen, text: str) -> None:
    """Wait until the collector's log says `text` (at most 30 s)."""
    said = _log_of(proc).wait_for(text, 30)
    assert text in said, said


def _to_the_end(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """The collector's (stdout, stderr) once it ends, its log whole: what waits read included."""
    stdout, stderr = proc.communicate(timeout=timeout)
    return stdout, _log_of(proc).text() + stderr


def test_frames_are_saved_as_the_daemon_decodes_them_a_folder_a_camera(tmp_path):
    """RGB raw, a Mono12 camera's 16-bit counts, a JPEG and a grey frame: each PNG holds the
    pixels the daemon's parse_frame gives for the same message; another camera's frames, a
    message that is no frame, a frame id sent again and a master part's frame are handled, and
    --count ends it."""
    rng = np.random.default_rng(0)
    colour = (rng.random((40, 60, 3)) * 255).astype(np.uint8)
    mono12 = (rng.random((40, 60)) * 4095).astype(np.uint16)
    grey = (rng.random((40, 60)) * 255).astype(np.uint8)
    messages = [
        frame_message("top", 7, colour[:, :, ::-1], color_order="RGB"),
        frame_message("top", 8, mono12, pixel_bits=12),
        frame_message("top", 9, colour, "jpeg"),
        frame_message("side", 1, grey),
        frame_message("top", 7, grey),  # a sender that started its ids again
        frame_message("top", 11, grey, part_id="RR-SCRATCH-1"),  # a red rabbit, at the shift's start
    ]
    out = tmp_path / "good"
    proc, endpoint = _collect(out, "--count", 5, "--camera", "top", "--timeout", 60,
                              "--set", "edge.master_defective_parts=[RR-*]")  # fmt: skip
    unreadable = [header("top", 1, encoding="webp"), b"x"]  # no readable frame
    stdout, stderr = _sent_to_the_end(proc, endpoint, [unreadable, *messages, frame_message("top", 10, grey)])
    assert proc.returncode == 0, stderr
    assert f"5 frames -> {out / 'top'}" in stdout, stdout
    assert "left: 1 no readable frame (the log says why), 1 of other cameras (--camera), 1 of master parts" in stdout
    assert "top: frames of 40x60, 3 channels" in stderr and "one camera's images train one model" in stderr
    saved = {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in (out / "top").iterdir()}
    (again,) = [n for n in saved if n.startswith("top_7_")]  # named by its receive time too
    assert set(saved) == {"top_7.png", "top_8.png", "top_9.png", "top_10.png", again}
    np.testing.assert_array_equal(saved["top_7.png"], colour)  # RGB read as the BGR it is
    np.testing.assert_array_equal(saved["top_8.png"], mono12)  # the counts, for training's --pixel-bits
    np.testing.assert_array_equal(saved[again], grey)
    assert "top: 16-bit frames, saved as their counts (16-bit PNG; an image viewer shows counts of fewer than 16 " \
        "bits dark: stretch its levels to look); their headers say 12 bits: vqad train DATA --pixel-bits 12" \
        in stdout  # fmt: skip
    # What training reads of each file (by --pixel-bits 12, which the model keeps) is what the
    # daemon reads of the same message (by the model's bits).
    for name, message in (("top_7.png", messages[0]), ("top_8.png", messages[1]), ("top_9.png", messages[2])):
        served = parse_frame([bytes(part) for part in message], Limits(), pixel_bits=12).image  # as received
        trained = read_image(out / "top" / name, pixel_bits=12)
        np.testing.assert_array_equal(trained.reshape(served.shape), served, err_msg=name)
    assert not (out / "side").exists()


def test_a_frame_it_cannot_write_ends_the_collection_and_says_what_was_written(tmp_path):
    """A full disk at the third frame: libpng said "Write Error" on stderr and the command only
    "cannot write …", without why or what it had written. It now says what it wrote, then the
    system's reason for the file it could not write (exit 7), and leaves no part of that file."""
    rng = np.random.default_rng(2)
    small, large = np.zeros((16, 16), np.uint8), (rng.random((200, 200, 3)) * 255).astype(np.uint8)
    out = tmp_path / "good"
    proc, endpoint = _collect(out, "--timeout", 60, preexec_fn=lambda: _files_of_at_most(20_000))
    frames = [frame_message("cam0", i, image) for i, image in enumerate((small, small, large, small))]
    stdout, stderr = _sent_to_the_end(proc, endpoint, frames)
    assert proc.returncode == 7, stderr
    assert f"2 frames -> {out / 'cam0'}" in stdout, stdout
    assert f"cannot use {out / 'cam0' / 'cam0_2.png'}: File too large" in stderr, stderr
    assert "libpng" not in stderr
    assert sorted(p.name for p in (out / "cam0").iterdir()) == ["cam0_0.png", "cam0_1.png"]


def test_every_s_keeps_a_cameras_frame_at_most_so_often_and_sigterm_ends_with_the_summary(tmp_path):
    rng = np.random.default_rng(1)
    proc, endpoint = _collect(tmp_path / "good", "--every-s", 3600)
    try:
        _bound(proc)
        cam = Camera(endpoint)
        for i in range(3):
            cam.send(frame_message("cam0", i, (rng.random((16, 16)) * 255).astype(np.uint8)))
        assert wait_for(lambda: (tmp_path / "good" / "cam0" / "cam0_0.png").exists(), 30)
        time.sleep(1.0)  # the other two arrive
        cam.close()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = _to_the_end(proc, 30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "1 frame -> " in stdout and "left: 2 within --every-s of their camera's last one" in stdout
    assert [p.name for p in (tmp_path / "good" / "cam0").iterdir()] == ["cam0_0.png"]


@pytest.mark.parametrize("where", ["unwritable", "taken"])
def test_a_folder_it_cannot_write_or_an_endpoint_taken_is_refused_at_once(tmp_path, where):
    import zmq

    if where == "unwritable":
        proc = run_vqad("collect", "/proc/good", "--timeout", 5, check=False)
        assert proc.returncode == 7 and "cannot use /proc/good: /proc cannot be written (" in proc.stderr
        return
    endpoint = f"tcp://127.0.0.1:{free_loopback_port()}"
    holder = zmq.Context.instance().socket(zmq.PULL)
    holder.bind(endpoint)  # a daemon serving there
    try:
        proc = run_vqad("collect", tmp_path / "good", "--frames", endpoint, "--timeout", 5, check=False)
    finally:
        holder.close(linger=0)
    assert proc.returncode != 0 and f"vqad collect cannot bind its frames socket to {endpoint}: " in proc.stderr
    assert not (tmp_path / "good").exists()


def test_with_curve_on_only_an_authorized_cameras_frames_are_collected(tmp_path):
    """The edge config's CURVE keys hold for the collection as for the daemon: a camera whose
    key is not among the authorized ones is not heard."""
    import zmq

    from edge.security import create_keys, make_curve_client

    create_keys(tmp_path / "server", "server")
    create_keys(tmp_path / "clients", "cam")
    create_keys(tmp_path / "strangers", "mallory")
    server_public = tmp_path / "server" / "server.key"
    proc, endpoint = _collect(tmp_path / "good", "--count", 1, "--timeout", 60,
                              "--set", "edge.curve.enabled=true",
                              "--set", f"edge.curve.server_secret_key={tmp_path / 'server' / 'server.key_secret'}",
                              "--set", f"edge.curve.authorized_keys_dir={tmp_path / 'clients'}")  # fmt: skip
    ctx = zmq.Context.instance()
    sockets = []

    def camera_with(key):
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        make_curve_client(sock, key, server_public)
        sock.connect(endpoint)
        sockets.append(sock)
        return sock

    try:
        _bound(proc)
        stranger = camera_with(tmp_path / "strangers" / "mallory.key_secret")
        allowed = camera_with(tmp_path / "clients" / "cam.key_secret")
        # A refused peer's handshake never completes, so its send would wait: it gets 5 s. The
        # allowed camera's handshake completes, in well under a second unless the CPU is shared.
        for sock, camera_id, wait_ms in ((stranger, "mallory", 5000), (allowed, "cam", 30000)):
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLOUT)
            if poller.poll(wait_ms):
                sock.send_multipart(frame_message(camera_id, 0, np.full((16, 16), 99, np.uint8)))
            else:
                assert camera_id == "mallory", "the authorized camera's handshake did not complete in 30 s"
        stdout, stderr = _to_the_end(proc, 60)
    finally:
        proc.kill()
        for sock in sockets:
            sock.close(linger=0)
    assert proc.returncode == 0, stderr
    assert [p.name for p in (tmp_path / "good").iterdir()] == ["cam"], stdout


def test_a_camera_whose_key_is_removed_is_no_longer_collected(tmp_path):
    """A key removed from authorized_keys_dir while its camera is connected: that camera's next
    frames are not written, as the daemon refuses them; the other camera's are."""
    from edge.security import create_keys

    keys = {name: create_keys(tmp_path / "clients", name)[1] for name in ("kept", "gone")}
    server_public = create_keys(tmp_path / "server", "server")[0]
    proc, endpoint = _collect(tmp_path / "good", "--count", 2, "--timeout", 60,
                              "--set", "edge.curve.enabled=true",
                              "--set", f"edge.curve.server_secret_key={tmp_path / 'server' / 'server.key_secret'}",
                              "--set", f"edge.curve.authorized_keys_dir={tmp_path / 'clients'}")  # fmt: skip
    cameras = {}
    try:
        _bound(proc)
        cameras = {name: Camera(endpoint, (key, server_public)) for name, key in keys.items()}
        cameras["gone"].send(frame_message("gone", 0, np.full((16, 16), 99, np.uint8)))
        _said(proc, "gone: frames of 16x16")  # its handshake is done: it holds a connection
        (tmp_path / "clients" / "gone.key").unlink()
        _said(proc, "(0 added, 1 removed)")
        cameras["gone"].send(frame_message("gone", 1, np.full((16, 16), 99, np.uint8)))
        _said(proc, "refused frames from a client whose key")
        cameras["kept"].send(frame_message("kept", 0, np.full((16, 16), 99, np.uint8)))
        stdout, stderr = _to_the_end(proc, 60)
    finally:
        proc.kill()
        for camera in cameras.values():
            camera.sock.close(linger=0)
    assert proc.returncode == 0, stderr
    written = sorted(p.relative_to(tmp_path / "good").as_posix() for p in (tmp_path / "good").rglob("*.png"))
    assert written == ["gone/gone_0.png", "kept/kept_0.png"], stdout
