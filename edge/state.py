"""The daemon's state folder: a marker that it is running (left behind by a kill or a power
cut, so the next start knows), and how many unclean exits the folder has seen."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from edge.metrics import DaemonMetrics

log = logging.getLogger(__name__)


def mark_running(state_dir: Path, metrics: DaemonMetrics) -> Path:
    """Check for a previous run that did not stop cleanly (log, count, metrics), then mark this
    one as running. -> the marker, which a clean shutdown removes."""
    state_dir.mkdir(parents=True, exist_ok=True)
    marker = state_dir / "vqad-serve.running"
    state_file = state_dir / "vqad-serve.state.json"
    state = _read_state(state_file)
    if marker.exists():
        state["unclean_exits"] += 1
        log.warning(
            "the previous daemon (%s) did not shut down cleanly; results it had not published are lost "
            "to it (unclean exits so far: %d)",
            marker.read_text().strip(),
            state["unclean_exits"],
        )
        metrics.previous_exit_unclean.set(1)
        # Written whole or not at all: a power cut mid-write must not leave a file the next
        # start cannot read (it read it before, and the daemon then never started again).
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(state_file)
    metrics.unclean_exits.set(state["unclean_exits"])
    marker.write_text(f"pid {os.getpid()} started {time.strftime('%Y-%m-%dT%H:%M:%S')}")
    return marker


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
