"""The daemon's state folder: a lock that one daemon at a time holds, a marker that it is
running (left behind by a kill or a power cut, so the next start knows), how many unclean exits
the folder has seen, the runs of the daemons before this one (their results' `run`), and what
`vqad ctl` changed (`Overrides`), so that a restart does not undo it."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from edge.durable import replace_synced
from edge.errors import ConfigError
from edge.metrics import DaemonMetrics

log = logging.getLogger(__name__)

LOCK_FILE = "vqad-serve.lock"


class LockHeldError(Exception):
    """Another running process holds the lock (`holder`: "pid N", as it wrote)."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


def hold_lock(path: Path, holders: str) -> IO[str] | None:
    """An exclusive lock on the file at `path` (made, with its folder), which the kernel lets go
    when the process ends, however it ends; "pid N" written in it for the next to be refused.
    -> the open lock file, to close at the end; None when it cannot be made. LockHeldError when
    another process holds it. On a filesystem without locks (ENOLCK on some network mounts) a
    warning says that a second of `holders` (e.g. "daemon") would not be refused, and None."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path, "a+")  # held open for the holder's life
    except OSError:
        return None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(lock)
        lock.close()
        raise LockHeldError(holder) from None
    except OSError as exc:
        lock.close()
        log.warning("%s cannot be locked (%s): a second %s on it would not be refused",
                    path.parent, exc.strerror or exc, holders)  # fmt: skip
        return None
    try:  # who holds it, for a second one's refusal; unbuffered, so that a full disk leaves it unnamed
        os.ftruncate(lock.fileno(), 0)
        os.write(lock.fileno(), f"pid {os.getpid()}\n".encode())
    except OSError:
        pass
    return lock


def hold_state_folder(state_dir: Path) -> IO[str] | None:
    """Take the state folder for this daemon (hold_lock). -> the open lock file, to close at the
    end; None when the folder cannot be written (mark_running says so) or locked. ConfigError
    when another running daemon holds it: two daemons on one folder (a second line's, started
    from a copy of the first's unit) would each take the other's marker for a crash and the
    other's `vqad ctl` changes for their own."""
    try:
        return hold_lock(state_dir / LOCK_FILE, "daemon")
    except LockHeldError as held:
        raise ConfigError(
            f"the state folder {state_dir} is in use by a running daemon ({held.holder}): give each daemon a "
            "state_dir of its own (edge.state_dir)"
        ) from None


def state_folder_holder(state_dir: Path) -> str | None:
    """Who holds the state folder now ("pid N"), or None when no running daemon does."""
    try:
        with open(state_dir / LOCK_FILE) as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _holder(lock)
    except OSError:
        pass
    return None


def _holder(lock: IO[str]) -> str:
    """Who the lock file says holds it ("pid N"), read from its start."""
    lock.seek(0)
    return lock.read().strip()[:100] or "another process"


def mark_running(state_dir: Path, metrics: DaemonMetrics) -> tuple[Path, bool]:
    """Check for a previous run that did not stop cleanly (log, count, metrics), then mark this
    one as running. -> the marker, which a clean shutdown removes where it is, and whether the
    previous run left its own (killed, crashed, or the power lost).
    A state folder whose disk is full or read-only is an error in the log, not a start refused:
    the line's inspection needs no disk, and under systemd a refused start is refused again
    every 2 s."""
    state_dir.mkdir(parents=True, exist_ok=True)
    marker = state_dir / "vqad-serve.running"
    state_file = state_dir / "vqad-serve.state.json"
    state = _read_state(state_file)
    unclean = marker.exists()
    try:
        if unclean:
            state["unclean_exits"] += 1
            log.warning(
                "the previous daemon (%s) did not shut down cleanly; results it had not published are lost "
                "to it (unclean exits so far: %d)",
                marker.read_text(errors="replace").strip()[:200],
                state["unclean_exits"],
            )
            metrics.previous_exit_unclean.set(1)
            # Written whole or not at all: a power cut mid-write must not leave a file the next
            # start cannot read (it read it before, and the daemon then never started again).
            write_whole(state_file, state)
        # On the disk at once: a power cut in the daemon's first half minute is an unclean exit too.
        replace_synced(marker, f"pid {os.getpid()} started {time.strftime('%Y-%m-%dT%H:%M:%S')}".encode())
    except OSError as exc:
        log.error(
            "the state folder %s cannot be written (%s): the daemon serves, but the next start cannot tell whether "
            "this one stopped cleanly, nor keep what vqad ctl changes (edge.state_dir names another folder)",
            state_dir, exc.strerror or exc,
        )  # fmt: skip
    metrics.unclean_exits.set(state["unclean_exits"])
    return marker, unclean


def _read_state(state_file: Path) -> dict[str, int]:
    """The state folder's counts; a file that cannot be read (a power cut while an older version
    wrote it) starts them again, with a warning, instead of stopping the start."""
    if not state_file.is_file():
        return {"unclean_exits": 0}
    try:
        state = json.loads(state_file.read_text())
        return {"unclean_exits": int(state["unclean_exits"])}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s is unreadable (%s): the count of unclean exits starts again", state_file, exc)
        return {"unclean_exits": 0}


RUNS_FILE = "vqad-serve.runs.json"
# The runs a heartbeat names before its own (33 bytes each in every heartbeat): enough for a
# subscriber away across a night of watchdog restarts.
RUNS_KEPT = 16


def follow_runs(state_dir: Path, run_id: str) -> list[str]:
    """Add this daemon's run to the state folder's list of runs. -> the runs of the daemons that
    used the folder before it, oldest first (at most RUNS_KEPT - 1): the heartbeat names them, so
    that a subscriber away across restarts learns which runs it never saw, and asks the record
    for their results. A list that cannot be read starts again, one that cannot be written leaves
    this run out of the next start's; each with a warning, and the daemon serves."""
    path = state_dir / RUNS_FILE
    runs: list[str] = []
    try:
        if path.is_file():
            runs = [str(run) for run in json.loads(path.read_text())["runs"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s is unreadable (%s): the heartbeat names no run before this one", path, exc)
    previous = runs[-(RUNS_KEPT - 1) :]
    try:
        write_whole(path, {"runs": [*previous, run_id]})
    except OSError as exc:
        log.warning("%s cannot be written (%s): the next start's heartbeat will not name this run",
                    path, exc.strerror or exc)  # fmt: skip
    return previous


def write_whole(path: Path, data: dict[str, Any]) -> None:
    """Write JSON whole or not at all (a power cut mid-write leaves the older file): the new one is
    on the disk before it takes the name."""
    replace_synced(path, json.dumps(data).encode())


class KeptFile:
    """A file of the state folder that the daemon writes whole at each change of what it keeps
    over a restart (edge.master's checks, edge.fail_rate's raised cameras). A refusal (a full or
    read-only disk) is said once, with what it costs (`lost`): the daemon serves on without it."""

    def __init__(self, path: Path, lost: str):
        self.path, self.lost, self._refused = path, lost, False

    def write(self, data: dict[str, Any]) -> None:
        try:
            write_whole(self.path, data)
        except OSError as exc:
            if not self._refused:
                log.error("%s cannot be written (%s): %s", self.path, exc, self.lost)
            self._refused = True


@dataclass
class Overrides:
    """What `vqad ctl` changed in the running daemon, kept in STATE_DIR/vqad-serve.overrides.json
    so that a restart (a power cut, systemd) neither puts the line back on a threshold it was
    taken off nor starts a camera someone paused.

    threshold: {"value", "source" (who, why, when), "model_sha256", "replaces"}: it applies at a
    start only on the same model, over the same configured threshold (the package's, or
    edge.threshold) that it replaced; a new package, a recalibrated model.json or another
    edge.threshold is a newer decision, and the kept threshold is dropped. A reload drops it
    too, as it does in the running daemon. paused: the paused cameras."""

    path: Path
    threshold: dict[str, Any] | None = None
    paused: list[str] = field(default_factory=list)

    FILE_NAME = "vqad-serve.overrides.json"

    @classmethod
    def load(cls, state_dir: Path) -> Overrides:
        """The overrides kept in `state_dir`; none when there are none, or (with a warning) when
        the file cannot be read: the start goes on with the package's threshold."""
        path = state_dir / cls.FILE_NAME
        if not path.is_file():
            return cls(path)
        try:
            data = json.loads(path.read_text())
            threshold, paused = data.get("threshold"), data.get("paused", [])
            if threshold is not None:
                threshold = {k: threshold[k] for k in ("value", "source", "model_sha256", "replaces")}
                threshold["value"], threshold["replaces"] = float(threshold["value"]), float(threshold["replaces"])
                if not isinstance(threshold["source"], dict):
                    raise TypeError("the threshold's source is not an object")
            if not isinstance(paused, list) or not all(isinstance(camera, str) for camera in paused):
                raise TypeError("paused is not a list of camera ids")
            return cls(path, threshold, paused)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("%s is unreadable (%s): what vqad ctl changed before the restart is not restored", path, exc)
            return cls(path)

    def applies(self, model_sha256: str, configured: float) -> bool:
        """Whether the kept threshold is put back on a start on this model whose configured
        threshold (the package's, or edge.threshold) is `configured`."""
        kept = self.threshold
        return kept is not None and kept["model_sha256"] == model_sha256 and kept["replaces"] == configured

    def save(self) -> bool:
        """Keep the overrides -> whether they were kept. A disk that refuses leaves them in
        force until the next start, with an error in the log."""
        try:
            write_whole(self.path, {"threshold": self.threshold, "paused": self.paused})
        except OSError as exc:
            log.error("%s cannot be written (%s): what vqad ctl changed holds until the daemon restarts", self.path,
                      exc)  # fmt: skip
            return False
        return True
