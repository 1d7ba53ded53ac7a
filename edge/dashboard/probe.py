"""The daemon's own state, read from its Prometheus endpoint: whether it is up, ready or
stalled (a loop of its pipeline not coming round, edge.watchdog), its queue, the threshold in
force, reloads, the drift alarm per camera, and how many results it has published since the
probe began (so that the page can tell a daemon whose results do not reach it).

One thread scrapes every PROBE_EVERY_S, whatever the number of open pages, so browsers never
add load on the daemon.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

# A scrape costs the daemon well under a millisecond; every 2 s keeps "ready" and the queue
# current on the page without adding to the daemon's load.
PROBE_EVERY_S = 2.0
PROBE_TIMEOUT_S = 1.5

_SCALARS = {
    "vqad_ready": "ready",
    "vqad_stalled": "stalled",
    "vqad_queue_depth": "queue_depth",
    "vqad_threshold": "threshold",
    "vqad_model_reloads_total": "reloads",
    "vqad_model_reload_failures_total": "reload_failures",
    "vqad_unrecorded_total": "unrecorded",
    "vqad_record_pending": "record_pending",
    "vqad_record_behind_seconds": "record_behind_s",
    "vqad_backend_errors_total": "backend_errors",
}


def read_metrics(text: str) -> dict[str, Any]:
    """The daemon's Prometheus text -> the fields the dashboard shows."""
    state: dict[str, Any] = {"drift": {}}
    for family in text_string_to_metric_families(text):
        if family.name == "vqad_results":  # before its first result, a family without samples
            state["published"] = 0
        for sample in family.samples:
            if sample.name == "vqad_results_total":  # one sample per status and decision
                state["published"] += int(sample.value)
            elif sample.name in _SCALARS:
                state[_SCALARS[sample.name]] = sample.value
            elif sample.name in ("vqad_drift_ks", "vqad_drift_alarm"):
                camera = sample.labels.get("camera", "")
                key = "ks" if sample.name == "vqad_drift_ks" else "alarm"
                state["drift"].setdefault(camera, {})[key] = sample.value
    for flag in ("ready", "stalled"):
        if flag in state:
            state[flag] = bool(state[flag])
    for camera in state["drift"].values():
        camera["alarm"] = bool(camera.get("alarm", 0))
    return state


class MetricsProbe(threading.Thread):
    def __init__(self, url: str):
        super().__init__(name="metrics-probe", daemon=True)
        self.url = url
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.state: dict[str, Any] = {"up": None, "metrics": url or None}
        self._published_before: int | None = None  # the daemon's count at the first scrape

    def run(self) -> None:
        while not self.stopping.is_set():
            self._scrape()
            self.stopping.wait(PROBE_EVERY_S)

    def _scrape(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=PROBE_TIMEOUT_S) as response:
                found = read_metrics(response.read().decode("utf-8", "replace"))
            found.update(up=True, error=None, published_since_start=self._since_start(found.get("published")))
        except Exception as exc:  # noqa: BLE001 - any answer not the metrics: one cut short
            # (http.client.IncompleteRead), one that is not HTTP, text the parser refuses. Uncaught,
            # it ended this thread, and the page showed the last state for good.
            found = {"up": False, "ready": False, "error": f"{type(exc).__name__}: {exc}"[:200], "drift": {}}
        found.update(metrics=self.url, checked_s=time.time())
        with self.lock:
            was_up, self.state = self.state.get("up"), found
        if found["up"] != was_up:  # a line when the daemon comes up or goes down, not every scrape
            if found["up"]:
                log.info("the daemon's metrics answer at %s", self.url)
            else:
                log.warning("the daemon's metrics do not answer at %s: %s", self.url, found["error"])

    def _since_start(self, published: int | None) -> int | None:
        """Results the daemon published since this probe's first scrape; all of them when its
        count went back (a daemon restarted since: a counter begins again at 0)."""
        if published is None:
            return None
        if self._published_before is None:
            self._published_before = published
        elif published < self._published_before:
            self._published_before = 0
        return published - self._published_before

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return dict(self.state)

    def stop(self) -> None:
        self.stopping.set()
        self.join(PROBE_TIMEOUT_S + 1)
