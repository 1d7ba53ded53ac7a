"""The daemon's control: a ROUTER socket for `vqad ctl`'s REQ (`control_endpoint`, off by
default; CURVE when the daemon's is on) and SIGHUP, served by one thread so that loading a model
never stalls inference. A reload loads in a thread of its own and is answered when it is done;
meanwhile `status` is answered at once (it names the reload), and a change is refused, so that a
slow or hung load does not leave the line's control silent. A reload not done within
`edge.reload_timeout_s` is given up: its requester is answered so, changes are taken again, and
should its load return after all, the model it loaded is closed, never swapped in.

Requests are JSON: {"command": NAME, "args": {...}, "by": WHO}; replies are JSON with "ok".
Commands: status; set-threshold (value, reason; force for RAISED_REFUSED times the calibrated
threshold or more), applied from the next batch; reload (the
model package at MODEL_DIR, as it is now: switch a `current` symlink to a new one first);
pause and resume (a camera); master (a camera and a master part's id: its next frame without
a part id, edge/master.py). Every change is logged, and written to the record with who made
it and when (master is not a change: the check it leads to is the record's row). The threshold
set and the paused cameras are kept in the state folder, so that a restart does not undo them
(edge.state.Overrides).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from edge import transport
from edge.errors import PackageError, VqadError
from edge.inspection import mask_file, mask_note
from edge.master import TAG_S
from edge.package import ModelPackage, load_package
from edge.protocol import MAX_ID_LENGTH, is_id
from edge.serving import Serving, configured_threshold, load_serving
from edge.threshold import RAISED_REFUSED
from edge.watchdog import notify

if TYPE_CHECKING:
    from edge.daemon import Daemon

log = logging.getLogger(__name__)

CHANGES = ("set-threshold", "reload", "pause", "resume")  # refused while a reload runs
COMMANDS = ("status", *CHANGES, "master")


class Control:
    def __init__(self, daemon: Daemon, endpoint: str):
        """Binds the control socket now (in the daemon's startup), so that a taken endpoint
        stops the start instead of a thread."""
        self.daemon, self.endpoint = daemon, endpoint
        self.sock: zmq.Socket | None = None
        self.reloading: dict[str, str] | None = None  # {"since", "by"} while a reload runs
        # Each reload's number; one given up gets a new number, which its thread no longer holds.
        self._generation = 0
        self._swapped = 0  # the number of the reload that swapped its model in last
        self._swap_lock = threading.Lock()  # a reload's swap and its giving up: one or the other
        self._started_reload: tuple[float, list[bytes] | None] = (0.0, None)  # the running one's start, requester
        self._thread = threading.local()  # a reload thread's own number
        self._reloaded: queue.SimpleQueue[tuple[int, list[bytes] | None, dict[str, Any]]] = queue.SimpleQueue()
        self._package_look = PackageLook(daemon.model_dir)
        if endpoint:
            self.sock = daemon.ctx.socket(zmq.ROUTER)
            self.sock.setsockopt(zmq.LINGER, 0)
            transport.secure_server(self.sock, daemon.cfg)
            transport.bind(self.sock, endpoint, "control")

    def run(self) -> None:
        """Serve requests and SIGHUP until the daemon stops."""
        d, sock = self.daemon, self.sock
        try:
            while not d.should_exit.is_set():
                self._answer_reloaded()
                self._give_up_late_reload()
                if d.reload_requested.is_set() and self.reloading is None:  # one after another
                    d.reload_requested.clear()
                    self._start_reload(None, "SIGHUP")
                if sock is not None and sock.poll(100):
                    *envelope, body = sock.recv_multipart(copy=False)
                    self._serve_admitted([part.bytes for part in envelope], body)
                elif sock is None:
                    time.sleep(0.1)
        finally:
            if sock is not None:
                sock.close(linger=0)

    def _serve_admitted(self, envelope: list[bytes], body: zmq.Frame) -> None:
        """A request's answer, unless it came from a client whose CURVE key was removed."""
        curve = self.daemon.curve
        if curve is not None and not curve.keys.admits(body, "a control request"):
            self._send(envelope, {"ok": False, "error": "this client's CURVE key was removed from the daemon's "
                                                        "authorized_keys_dir"})  # fmt: skip
            return
        try:
            request = json.loads(body.bytes)
        except (ValueError, UnicodeDecodeError):
            request = {}
        self._serve(envelope, request if isinstance(request, dict) else {})

    def _serve(self, envelope: list[bytes], request: dict[str, Any]) -> None:
        """Answer a request now, or, for a reload, once it is done."""
        command, by = request.get("command"), str(request.get("by") or "unknown")
        if command == "reload" and self.reloading is None:
            self._start_reload(envelope, by)
            return
        if self.reloading is not None and command in CHANGES:
            reply = {"ok": False, "error": f"a reload is under way (since {self.reloading['since']}, by "
                                           f"{self.reloading['by']}): {command} after it is done"}  # fmt: skip
        else:
            reply = self.handle(request)
        self._send(envelope, reply)

    def _start_reload(self, envelope: list[bytes] | None, by: str) -> None:
        """Reload in a thread of its own; its reply goes to `envelope` (None: a SIGHUP's, logged)."""
        self.reloading = {"since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "by": by}
        self._started_reload = (time.monotonic(), envelope)
        with self._swap_lock:
            self._generation += 1
            generation = self._generation

        def reload() -> None:
            self._thread.generation = generation
            self._reloaded.put((generation, envelope, self.handle({"command": "reload", "by": by})))

        threading.Thread(target=reload, name="reload", daemon=True).start()

    def _answer_reloaded(self) -> None:
        """Send a finished reload's reply (ZeroMQ sockets are this thread's alone); a given-up
        reload's, which returned after all, is only logged."""
        try:
            generation, envelope, reply = self._reloaded.get_nowait()
        except queue.Empty:
            return
        if generation != self._generation:  # its swap was refused, or its load failed
            log.warning("the reload given up earlier returned after all: %s", reply.get("error"))
            return
        self.reloading = None
        self._send(envelope, reply)

    def _give_up_late_reload(self) -> None:
        """Give up a reload that has run past edge.reload_timeout_s; its requester is told."""
        started, envelope = self._started_reload
        timeout = self.daemon.cfg.reload_timeout_s
        if self.reloading is None or time.monotonic() - started < timeout:
            return
        with self._swap_lock:
            if self._swapped == self._generation:  # swapped in: its reply is on its way
                return
            self._generation += 1  # its thread's swap is refused from now on
        since, by = self.reloading["since"], self.reloading["by"]
        self.reloading = None
        self.daemon.metrics.reload_failures.inc()
        message = (f"the reload (since {since}, by {by}) did not finish within {timeout:g} s "
                   "(edge.reload_timeout_s): given up, the old model serves on and changes are taken again; "
                   "its load still holds what it took until it returns (a restart frees it)")  # fmt: skip
        log.error(message)
        notify("READY=1")
        self._send(envelope, {"ok": False, "error": message})

    def _send(self, envelope: list[bytes] | None, reply: dict[str, Any]) -> None:
        if envelope is not None and self.sock is not None:
            self.sock.send_multipart([*envelope, json.dumps(reply).encode()])

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """One command -> its JSON reply; a refused one says why and changes nothing. No request,
        however malformed, ends the control thread (and with it the daemon)."""
        if not isinstance(request, dict):
            request = {}
        command, args, by = request.get("command"), request.get("args") or {}, str(request.get("by") or "unknown")
        try:
            if not isinstance(command, str) or command not in COMMANDS:
                raise ValueError(f"unknown command {command!r}; one of {', '.join(COMMANDS)}")
            if not isinstance(args, dict):
                raise ValueError(f"a command's args are a JSON object, got {json.dumps(args)[:60]}")
            reply = getattr(self, "_" + command.replace("-", "_"))(args, by)
            return {"ok": True, **reply}
        except (ValueError, TypeError, VqadError) as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a fault in a command is its refusal, not the daemon's end
            log.exception("control: %s failed", command)
            return {"ok": False, "error": f"{command} failed: {type(exc).__name__}: {exc}"}

    def _change(self, kind: str, detail: dict[str, Any], by: str) -> None:
        if kind != "reload":  # a reload names its two models; any other change is the serving model's
            detail = {**detail, "model": self.daemon.serving.scoring.model}
        log.info("control: %s by %s: %s", kind, by, json.dumps(detail))
        if self.daemon.recorder is not None:
            self.daemon.recorder.event(kind, detail, by)

    def _status(self, args: dict[str, Any], by: str) -> dict[str, Any]:
        """The daemon's state, and where its package is: MODEL_DIR as it was given, made absolute
        (a `current` symlink, say: the heartbeat's `model_dir`), where it points now and the
        folder the serving package was loaded from; and what a reload would load that does not
        serve: another folder (the symlink moved), another model, or another calibration (`vqad
        calibrate` rewrote model.json)."""
        d = self.daemon
        serving = d.serving.package if d.serving else None
        now = self._package_look.now()
        pending = _what_a_reload_changes(serving, now)
        return {**d.state(), "recording": d.recorder is not None, "reloading": self.reloading,
                "model_dir_now": now.get("dir"), "model_dir_error": now.get("error"),
                "serving_from": str(serving.root) if serving else None,
                "reload_pending": bool(pending), "reload_would_load": pending}  # fmt: skip

    def _set_threshold(self, args: dict[str, Any], by: str) -> dict[str, Any]:
        value, reason = float(_arg(args, "value", (int, float, str))), _arg(args, "reason", str, "")
        force = args.get("force", False)
        if not 0 < value < math.inf:  # NaN or infinity would pass every frame
            raise ValueError(f"a threshold must be a finite number > 0, got {value}")
        if not reason:
            raise ValueError("set-threshold needs a reason")
        if not isinstance(force, bool):
            raise ValueError(f"argument 'force' must be true or false, got {json.dumps(force)[:40]}")
        d = self.daemon
        # Measured against the package's calibrated threshold, or edge.threshold where it is higher,
        # as vqad calibrate measures a new one against the old: a way back to either is never
        # refused (a daemon started at a trial threshold far under the calibration's included).
        reference, which = float(d.serving.package.threshold), "the calibrated threshold"
        if (configured := configured_threshold(d.serving.package, d.cfg)) > reference:
            reference, which = configured, "edge.threshold"
        if value >= RAISED_REFUSED * reference and not force:
            raise ValueError(
                f"{value:g} is {value / reference:.3g} times {which} ({reference:.6g}): every defect scoring "
                "between the two would pass. A slip of the decimal point? To set it anyway, --force"
            )
        at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        source = {"by": "vqad ctl set-threshold", "who": by, "reason": reason, "at": at}
        old = d.serving.scoring.threshold
        self._change("set-threshold", {"from": old, "to": value, "reason": reason}, by)  # before what it causes
        d.swap(d.serving.with_threshold(value, source), close_old=False)
        package = d.serving.package
        d.overrides.threshold = {"value": value, "source": source, "model_sha256": package.sha256,
                                 "replaces": configured_threshold(package, d.cfg)}  # fmt: skip
        kept = d.overrides.save()
        return {"threshold": value, "previous": old, "kept": kept}

    def _reload(self, args: dict[str, Any], by: str) -> dict[str, Any]:
        """Load, verify and warm up MODEL_DIR as it is now, beside the serving model; switch
        between batches. A package that fails leaves the old one serving."""
        d = self.daemon
        old = d.serving
        notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            new = load_serving(d.model_dir, d.cfg, d.metrics)
            if d.should_exit.is_set():  # the daemon began to stop while the package loaded
                new.close()
                raise VqadError("the daemon is stopping: the new package is not swapped in")
            if new.package.input_shape != old.package.input_shape:
                new.close()
                raise PackageError(
                    f"the new package takes {new.package.input_shape} frames, the serving one "
                    f"{old.package.input_shape}: frames already queued could not be scored; not swapped"
                )
        except Exception as exc:
            if getattr(self._thread, "generation", self._generation) == self._generation:  # not given up
                d.metrics.reload_failures.inc()
            log.error("reload of %s failed, the old model keeps serving: %s", d.model_dir, exc)
            notify("READY=1")
            raise VqadError(str(exc)) from exc
        generation = getattr(self._thread, "generation", None)  # None: not in a reload thread
        swapped = {"from": old.scoring.model, "to": new.scoring.model,
                   "threshold": {"from": old.scoring.threshold, "to": new.scoring.threshold},
                   "inspection": {"from": mask_note(old.mask), "to": mask_note(new.mask)}}  # fmt: skip
        with self._swap_lock:
            if generation is not None and generation != self._generation:
                new.close()
                raise VqadError("given up (edge.reload_timeout_s) before it finished loading: not swapped in")
            self._change("reload", swapped, by)  # before what it causes (alarms cleared, windows started again)
            keep_camera_state(old, new)
            d.swap(new)  # another model or calibration: the drift windows and the health gate's counts start again
            self._swapped = self._generation
        if d.overrides.threshold is not None:  # the package's threshold serves now, after a restart too
            d.overrides.threshold = None
            d.overrides.save()
        notify("READY=1")
        d.metrics.reloads.inc()
        return swapped

    def _pause(self, args: dict[str, Any], by: str) -> dict[str, Any]:
        camera = _camera(args)
        changed = camera not in self.daemon.paused
        self.daemon.paused.add(camera)
        kept = self._keep_paused()
        self._change("pause", {"camera": camera}, by)
        dropped = self.daemon.masters.drop_tag(camera) if self.daemon.masters is not None else None
        if dropped is not None:  # its next frame gets an error result, which would prove nothing
            log.warning("control: master part %s, named for camera %s's next frame, is dropped by the pause: name it "
                        "again after the resume", dropped, camera)  # fmt: skip
        return {**self._paused(camera, changed, kept), **({"master_dropped": dropped} if dropped else {})}

    def _resume(self, args: dict[str, Any], by: str) -> dict[str, Any]:
        camera = _camera(args)
        changed = camera in self.daemon.paused
        self.daemon.paused.discard(camera)
        kept = self._keep_paused()
        self._change("resume", {"camera": camera}, by)
        if changed and self.daemon.fail_rate is not None:  # a repair or changeover is done: its parts counted anew
            self.daemon.fail_rate.start_again(camera, "camera resumed")
        return self._paused(camera, changed, kept)

    def _master(self, args: dict[str, Any], by: str) -> dict[str, Any]:
        """The camera's next frame without a part_id (within edge.master.TAG_S) is the master part
        `part_id`: a line whose camera sends no part ids runs its master parts so."""
        camera, part_id = _camera(args), _id_arg(args, "part_id")
        masters = self.daemon.masters
        if masters is None:
            raise ValueError("no master parts are named (edge.master_good_parts, edge.master_defective_parts)")
        if camera in self.daemon.paused:  # its next frame would get an error result: a check that proves nothing
            raise ValueError(f"camera {camera!r} is paused, so its frames are not inspected and a master part "
                             f"proves nothing: resume it first (vqad ctl ENDPOINT resume {camera})")  # fmt: skip
        expected = masters.tag(camera, part_id, by)
        log.info("control: master part %s for camera %s's next frame (it must %s), by %s", part_id, camera, expected,
                 by)  # fmt: skip
        return {"camera": camera, "part_id": part_id, "expected": expected, "for_s": TAG_S,
                "seen": self.daemon.has_seen(camera)}  # fmt: skip

    def _keep_paused(self) -> bool:
        """The paused cameras, in the metrics and kept for the next start (edge.state.Overrides)
        -> whether kept."""
        self.daemon.metrics.show_paused(self.daemon.paused)
        self.daemon.overrides.paused = sorted(self.daemon.paused)
        return self.daemon.overrides.save()

    def _paused(self, camera: str, changed: bool, kept: bool) -> dict[str, Any]:
        """The reply to pause and resume: the paused cameras; whether this request changed that
        (a resume of a camera that was not paused did not); whether the camera has sent frames
        since the start (a mistyped id pauses nothing that runs); and whether the state folder
        kept it for the next start."""
        return {"paused": sorted(self.daemon.paused), "changed": changed, "seen": self.daemon.has_seen(camera),
                "kept": kept}  # fmt: skip


# How long `status` waits to read MODEL_DIR: a filesystem that hangs (a network mount) must cost
# the answer this, never the answer itself.
PACKAGE_LOOK_S = 2.0


class PackageLook:
    """What MODEL_DIR holds now, read in a thread of its own: where it points, and its package's
    model and threshold (model.json alone; the graph is not hashed). One look at a time: a look
    still hanging is waited on again, not joined by another."""

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        self._found: dict[str, Any] = {}
        self._done = threading.Event()
        self._done.set()  # none under way

    def now(self) -> dict[str, Any]:
        """{"dir", "sha256", "threshold", "calibration", "mask"} as found, or {"dir", "error"} (dir None when the folder
        cannot be resolved, or does not answer within PACKAGE_LOOK_S)."""
        if self._done.is_set():
            self._done.clear()
            threading.Thread(target=self._look, name="vqad-package-look", daemon=True).start()
        if not self._done.wait(PACKAGE_LOOK_S):
            return {"dir": None, "error": f"{self.model_dir} did not answer within {PACKAGE_LOOK_S:g} s"}
        return self._found

    def _look(self) -> None:
        try:
            points_to = self.model_dir.resolve()
            try:
                package = load_package(points_to)
                self._found = {"dir": str(points_to), "sha256": package.sha256, "threshold": package.threshold,
                               "calibration": calibration_of(package), "mask": mask_file(package.meta)}  # fmt: skip
            except PackageError as exc:
                self._found = {"dir": str(points_to), "error": str(exc)}
        except OSError as exc:
            self._found = {"dir": None, "error": f"{self.model_dir}: {exc.strerror or exc}"}
        finally:
            self._done.set()


def _what_a_reload_changes(serving: ModelPackage | None, now: dict[str, Any]) -> list[str]:
    """What MODEL_DIR as it is now (PackageLook.now) holds that the serving package is not;
    nothing when either is not known."""
    if serving is None or now.get("error") or now.get("dir") is None:
        return []
    changes = ["another folder"] if Path(now["dir"]) != serving.root else []
    if now["sha256"] != serving.sha256:
        changes.append("another model")
    elif now["calibration"] != calibration_of(serving):
        changes.append("another calibration")
    if now["mask"] != mask_file(serving.meta):  # a new export has none: the mask in service would go
        changes.append("another inspection mask" if now["mask"] else "no inspection mask")
    return changes


def calibration_of(package: ModelPackage) -> str:
    """A package's threshold entry, all of it, as a digest: a calibration that came out at the
    same value (the same good images again, a mask that left out nothing high) is another all
    the same, while one written twice within a second of its `calibrated` time is told apart by
    what it was calibrated on."""
    entry = json.dumps(package.meta.get("threshold"), sort_keys=True, default=str)
    return hashlib.sha256(entry.encode()).hexdigest()


_REQUIRED = object()


def _camera(args: dict[str, Any]) -> str:
    """The `camera` argument: an id as frames carry it (edge.protocol.is_id)."""
    return _id_arg(args, "camera")


def _id_arg(args: dict[str, Any], name: str) -> str:
    """The argument `name`: an id as frames carry one (edge.protocol.is_id)."""
    value = _arg(args, name, str)
    if not is_id(value):
        raise ValueError(f"argument '{name}' must be 1..{MAX_ID_LENGTH} printable characters, got {value!r}"[:200])
    return value


def _arg(args: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = _REQUIRED) -> Any:
    """A command's argument `name`, of type `kind`; ValueError (the command's refusal) when it is
    missing without a default, or of another type."""
    if name not in args or args[name] is None:
        if default is _REQUIRED:
            raise ValueError(f"missing argument {name!r}")
        return default
    value = args[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(
            f"argument {name!r} must be {getattr(kind, '__name__', 'a number or text')}, got {value!r}"[:200]
        )
    return value


def request(
    endpoint: str,
    command: str,
    args: dict[str, Any],
    by: str,
    timeout_s: float = 30.0,
    curve_secret: str | None = None,
    curve_server_key: str | None = None,
) -> dict[str, Any]:
    """One request to a daemon's control socket (`vqad ctl`), as a CURVE client when given this
    client's secret key file and the daemon's public one; VqadError when it does not answer,
    HandshakeError as soon as it refuses the connection (its keys)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    handshakes = None
    try:
        transport.secure_client(sock, curve_secret, curve_server_key)
        handshakes = transport.HandshakeWatch(
            sock, endpoint, "client", "control", bool(curve_secret or curve_server_key)
        )
        transport.connect(sock, endpoint, "control")
        sock.send(json.dumps({"command": command, "args": args, "by": by}).encode())
        deadline = time.monotonic() + timeout_s
        while not sock.poll(100):
            handshakes.check()
            if time.monotonic() >= deadline:
                # Without the monitor's handshake events (an older libzmq), a refusal reads as silence.
                keys = "" if curve_secret else "; with CURVE on, give --curve-secret and --curve-server-key"
                raise VqadError(
                    f"no answer from {endpoint} within {timeout_s:g} s: is the daemon running with --control{keys}?"
                )
        return json.loads(sock.recv())
    finally:
        if handshakes is not None:
            handshakes.close()
        sock.close(linger=0)


def keep_camera_state(old: Serving, new: Serving) -> None:
    """`new` keeps what `old` knows of each camera when it is the same model measured the same
    way: the drift windows and alarms on the same calibration scores, the health gate's count of
    a frozen camera's repeats on the same figures. A reload of an unchanged package (a SIGHUP
    from a deploy script, a `current` symlink set again) would otherwise forget 200 frames a
    camera, log a standing drift alarm again, and give a frozen camera frozen_after more frames."""
    if new.package.sha256 != old.package.sha256:
        return
    if old.drift is not None and new.drift is not None and new.drift.measures_as(old.drift):
        new.drift = old.drift
    if old.health is not None and new.health is not None and new.health.checks_as(old.health):
        new.health = old.health
