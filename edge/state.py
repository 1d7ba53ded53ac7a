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
    state = json.loads(state_file.read_text()) if state_file.is_file() else {"unclean_exits": 0}
    if marker.exists():
        state["unclean_exits"] = int(state.get("unclean_exits", 0)) + 1
        log.warning(
            "the previous daemon (%s) did not shut down cleanly; results it had not published are lost "
            "to it (unclean exits so far: %d)",
            marker.read_text().strip(),
            state["unclean_exits"],
        )
        metrics.previous_exit_unclean.set(1)
        state_file.write_text(json.dumps(state))
    metrics.unclean_exits.set(state["unclean_exits"])
    marker.write_text(f"pid {os.getpid()} started {time.strftime('%Y-%m-%dT%H:%M:%S')}")
    return marker
