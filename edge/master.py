"""Master parts: parts whose verdict is known, run through the line to prove that its inspection
works (a good master and a defective one, the "red rabbit", at each shift's start or after a
changeover), as a quality system asks of every error-proofing device.

A frame whose `part_id` matches one of `edge.master_good_parts` or `edge.master_defective_parts`
(fnmatch patterns, defective first) is a master part: its result says what it was expected to
get and whether it did (`master`), and the log, `vqad_master_parts_total{camera,outcome}`, the
heartbeat (each camera's latest) and the record's changes say it too. A defective master that
passes is the line's proof that it lets that defect through: the parts since its last right
check are suspect.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from edge.recent import RecentDict

if TYPE_CHECKING:
    from edge.metrics import DaemonMetrics

log = logging.getLogger(__name__)


def master_words(detail: dict[str, Any]) -> str:
    """A master part's check (a `master-part` change row's detail, or a camera's latest in the
    heartbeat) in words, for `vqad records --daily`; the dashboard says the same."""
    part, expected, decision = detail.get("part_id"), detail.get("expected"), detail.get("decision")
    if detail.get("ok"):
        return f"master part {part} on camera {detail.get('camera')}: {decision}, as expected"
    got = "no decision (an error)" if decision is None else decision
    return f"master part {part} on camera {detail.get('camera')}: {got}, expected {expected}"


class MasterParts:
    """`check` each published result header: a master part's gets `master`: {"expected", "ok"}."""

    def __init__(
        self,
        good: Sequence[str],
        defective: Sequence[str],
        metrics: DaemonMetrics | None = None,
        on_check: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.patterns = [(pattern, "fail") for pattern in defective] + [(pattern, "pass") for pattern in good]
        self.metrics, self.on_check = metrics, on_check
        self.latest: RecentDict[str, dict[str, Any]] = RecentDict()  # camera -> its latest check
        self.lock = threading.Lock()

    def expected(self, part_id: str | None) -> str | None:
        """ "pass" for a good master, "fail" for a defective one, None for any other part."""
        if not part_id:
            return None
        return next((decision for pattern, decision in self.patterns if fnmatch.fnmatchcase(part_id, pattern)), None)

    def check(self, header: dict[str, Any]) -> None:
        """A result about to be published: a master part's header gets `master`, and its check
        is logged, counted, kept as its camera's latest and told to `on_check`."""
        expected = self.expected(header.get("part_id"))
        if expected is None:
            return
        ok = header["decision"] == expected
        header["master"] = {"expected": expected, "ok": ok}
        detail = {"camera": header["camera_id"], "part_id": header["part_id"], "frame_id": header["frame_id"],
                  "expected": expected, "decision": header["decision"], "score": header["score"], "ok": ok}  # fmt: skip
        with self.lock:
            self.latest[header["camera_id"]] = {**detail, "ts_ns": time.time_ns()}
        if ok:
            log.info("%s", master_words(detail))
        else:
            log.error("%s: the inspection does not decide it as it must; the parts since this camera's last right "
                      "master part are suspect", master_words(detail))  # fmt: skip
        if self.metrics is not None:
            self.metrics.master_parts.labels(header["camera_id"], "right" if ok else "wrong").inc()
        if self.on_check is not None:
            self.on_check(detail)

    def state(self) -> dict[str, dict[str, Any]]:
        """Each camera's latest master part check (the heartbeat's `master_parts`)."""
        with self.lock:
            return {camera: dict(check) for camera, check in sorted(self.latest.items())}
