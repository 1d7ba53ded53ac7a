"""Master parts: parts whose verdict is known, run through the line to prove that its inspection
works (a good master and a defective one, the "red rabbit", at each shift's start or after a
changeover), as a quality system asks of every error-proofing device.

A frame whose `part_id` matches one of `edge.master_good_parts` or `edge.master_defective_parts`
(fnmatch patterns, defective first) is a master part: its result says what it was expected to
get and whether it did (`master`), and the log, `vqad_master_parts_total{camera,outcome}`, the
heartbeat and the record (a `master-part` row, which the daily tally counts) say it too. A
defective master that passes is the line's proof that it lets that defect through: the parts
since its last right check are suspect.

The heartbeat keeps each master part's latest check, per camera: a shift's proof is a set of
master parts, and a red rabbit for one defect that fails rightly proves nothing of another
that passed. A wrong check stands until that master part (its `part_id`, the same at each run)
gets its verdict again, across restarts: the checks are kept in the state folder
(`vqad-serve.masters.json`), since restarting the daemon is no proof either. Nor is a run whose
frame the model did not judge (a paused camera's, an unfit frame): it is kept beside the
master part's judged check, as its `unjudged`, and replaces none.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.protocol import unfit_reasons
from edge.recent import RecentDict
from edge.state import KeptFile

if TYPE_CHECKING:
    from edge.metrics import DaemonMetrics

log = logging.getLogger(__name__)

# The master parts kept per camera, the most recent: a line keeps a handful per camera (a good
# one and a red rabbit per defect kind); a bridge that numbers each run's master anew would
# otherwise grow the heartbeat for months.
MASTERS_KEPT = 32
MASTERS_FILE = "vqad-serve.masters.json"  # in the state folder
# How long `vqad ctl master` waits for the camera's next frame: a person puts the part under the
# camera after naming it, in seconds rather than minutes; a tag left over would name a product.
TAG_S = 60.0


def master_words(detail: dict[str, Any]) -> str:
    """A master part's check (a `master-part` row's detail, or one in the heartbeat) in words,
    for the log; the dashboard says the same."""
    part, expected, decision = detail.get("part_id"), detail.get("expected"), detail.get("decision")
    named = f" (named by {detail['named_by']})" if detail.get("named_by") else ""
    said = f"master part {part}{named} on camera {detail.get('camera')}"
    if detail.get("ok"):
        return f"{said}: {decision}, as expected"
    if detail.get("unfit"):
        return f"{said}: failed by the camera health gate ({detail['unfit']}), not by the model"
    if decision is None:  # an error result: a paused camera, a failed batch, a stop
        return f"{said}: no decision ({detail.get('error') or 'an error'}), expected {expected}"
    return f"{said}: {decision}, expected {expected}"


def checked_right(decision: str | None, expected: str, unfit: str | None) -> bool:
    """Whether a master part got the decision it must get: by the model, on a frame the camera
    health gate found fit (a dark, blurred or frozen frame's fail is the gate's, and the model's
    score on it proves nothing either way)."""
    return decision == expected and not unfit


def proves(
    check: dict[str, Any], model_sha256: str | None, threshold: float | None, mask_sha256: str | None = None
) -> bool:
    """Whether a master part's check proves the inspection of model `model_sha256` at
    `threshold` through the inspection mask `mask_sha256` (None: the whole frame): it was made
    on them (one kept by a vqad that did not name them is taken as made on it; one that names no
    mask, on the whole frame). A reload of another model or mask, or a threshold set, is another
    inspection: a red rabbit whose defect lies where a new mask leaves out proves nothing of it."""
    made_on = (
        (check["model_sha256"], check.get("threshold"), check.get("mask_sha256")) if check.get("model_sha256") else None
    )
    return made_on is None or made_on == (model_sha256, threshold, mask_sha256)


def outcome(decision: str | None, expected: str, unfit: str | None) -> str:
    """A check as vqad_master_parts_total labels it, and the record's listings and `vqad watch`
    name it: "right"; "wrong", the model's decision otherwise, which makes the parts since
    suspect (VqadMasterPartWrong); "unproven", a frame the model did not judge (unfit, an
    error), which proves nothing either way."""
    if checked_right(decision, expected, unfit):
        return "right"
    return "unproven" if unfit or decision is None else "wrong"


def outcome_of(check: dict[str, Any]) -> str:
    """A check's outcome (a heartbeat's or a kept one's), as it names it; one kept or sent by a
    vqad that did not name it, worked out from its decision."""
    return check.get("outcome") or outcome(check.get("decision"), check["expected"], check.get("unfit"))


class MasterParts:
    """`check` each published result header: a master part's gets `master`: {"expected", "ok",
    "outcome"}."""

    def __init__(
        self,
        good: Sequence[str],
        defective: Sequence[str],
        metrics: DaemonMetrics | None = None,
        on_check: Callable[[dict[str, Any]], None] | None = None,
        kept: Path | None = None,
    ):
        """kept: the file that keeps the checks over a restart (`restore` reads it)."""
        self.patterns = [(pattern, "fail") for pattern in defective] + [(pattern, "pass") for pattern in good]
        self.metrics, self.on_check = metrics, on_check
        self.kept = KeptFile(kept, "the master parts' checks are not kept over a restart") if kept else None
        # camera -> master part_id -> its latest check; a camera's master parts are a handful.
        self.latest: RecentDict[str, RecentDict[str, dict[str, Any]]] = RecentDict()
        # camera -> (master part_id, until: monotonic, by whom), vqad ctl master
        self.tags: dict[str, tuple[str, float, str]] = {}
        # (camera, master part_id) -> who named the frame taken for it, until its check
        self.named: RecentDict[tuple[str, str], str] = RecentDict(MASTERS_KEPT)
        self.lock = threading.Lock()

    def expected(self, part_id: str | None) -> str | None:
        """A good master's decision ("pass"), a defective one's ("fail"); None for any other part."""
        if not part_id:
            return None
        return next((decision for pattern, decision in self.patterns if fnmatch.fnmatchcase(part_id, pattern)), None)

    def tag(self, camera_id: str, part_id: str, by: str = "unknown") -> str:
        """`vqad ctl master`: the camera's next frame without a part_id, within TAG_S, is the
        master part `part_id` (a line whose camera sends no part ids runs its master parts so),
        named by `by` -> the decision it must get. ValueError for an id that names no master
        part."""
        expected = self.expected(part_id)
        if expected is None:
            named = ", ".join(pattern for pattern, _ in self.patterns)
            raise ValueError(f"{part_id!r} names no master part (edge.master_good_parts, edge.master_defective_parts: "
                             f"{named})")  # fmt: skip
        with self.lock:
            self.tags[camera_id] = (part_id, time.monotonic() + TAG_S, by)
        return expected

    def take_tag(self, camera_id: str) -> str | None:
        """The master part_id `vqad ctl master` named for this camera's next frame, once; None
        when none was, or it was named over TAG_S ago (said: that frame may show the master
        part, put under the camera late, and is taken for a product)."""
        if not self.tags:  # the frame path's usual answer, without the lock
            return None
        with self.lock:
            tag = self.tags.pop(camera_id, None)
            if tag is None:
                return None
            part_id, until, by = tag
            if time.monotonic() < until:
                self.named[(camera_id, part_id)] = by
                return part_id
        log.warning("master part %s, named by %s for camera %s's next frame, was not seen within %g s: the frame "
                    "that came now is taken for a product; name the master part again, then put it under the camera",
                    part_id, by, camera_id, TAG_S)  # fmt: skip
        return None

    def drop_tag(self, camera_id: str) -> str | None:
        """The master part_id `vqad ctl master` named for this camera's next frame, dropped (its
        camera paused: that frame would get no decision); None when none waits."""
        with self.lock:
            tag = self.tags.pop(camera_id, None)
        return None if tag is None else tag[0]

    def check(self, header: dict[str, Any]) -> None:
        """A result about to be published: a master part's header gets `master`, and its check
        is logged, counted, kept as that master part's latest and told to `on_check`."""
        expected = self.expected(header.get("part_id"))
        if expected is None:
            return
        unfit = unfit_reasons(header)
        checked = outcome(header["decision"], expected, unfit)
        ok = checked == "right"
        header["master"] = {"expected": expected, "ok": ok, "outcome": checked}
        # The model and threshold it proves: a reload or a threshold set afterwards is another
        # inspection, which its checks do not prove (the dashboard tells them apart).
        detail = {"camera": header["camera_id"], "part_id": header["part_id"], "frame_id": header["frame_id"],
                  "expected": expected, "decision": header["decision"], "score": header["score"], "ok": ok,
                  "outcome": checked,
                  "model_sha256": (header.get("model") or {}).get("sha256"),
                  "threshold": header.get("threshold")}  # fmt: skip
        if mask := (header.get("model") or {}).get("mask_sha256"):
            detail["mask_sha256"] = mask  # the inspection mask it was judged through
        if unfit:
            detail["unfit"] = unfit
        if header["decision"] is None:
            detail["error"] = header.get("error") or "an error"
        checked_ns = time.time_ns()
        with self.lock:
            named_by = self.named.pop((header["camera_id"], header["part_id"]), None)
            if named_by is not None:  # the frame vqad ctl master named, by whom: the audit's who
                detail["named_by"] = named_by
            self._hold({**detail, "ts_ns": checked_ns})
            self._keep()
        if ok:
            log.info("%s", master_words(detail))
        elif checked == "unproven":  # the frame was not judged: nothing is known of the parts since
            then = "see to the camera, then run this master part again" if unfit else (
                "run this master part again once the camera's frames are judged")  # fmt: skip
            log.warning("%s: no proof of the inspection; %s", master_words(detail), then)  # as its alert
        else:
            log.error("%s: the inspection does not decide it as it must; the parts since this master part's last "
                      "right check are suspect", master_words(detail))  # fmt: skip
        if self.metrics is not None:
            self.metrics.master_parts.labels(header["camera_id"], checked).inc()
            if checked != "unproven":  # judged by the model: a check of the inspection served
                self.metrics.master_checked.labels(header["camera_id"]).set(checked_ns / 1e9)
                self.metrics.master_current.labels(header["camera_id"]).set(1.0)
        if self.on_check is not None:
            self.on_check(detail)

    def restore(self) -> None:
        """The checks kept before the restart, of the part ids that still name master parts; a
        wrong one is said again, since it stands until that master part is checked right."""
        if self.kept is None or not self.kept.path.is_file():
            return
        try:
            kept = json.loads(self.kept.path.read_text())
            checks = [check for parts in kept.values() for check in parts.values()]
            for check in sorted(checks, key=lambda c: c["ts_ns"]):
                if self.expected(check["part_id"]) == check["expected"]:
                    self._hold({**check, "outcome": outcome_of(check)})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("%s is unreadable (%s): the master parts' checks before the restart are not restored",
                        self.kept.path, exc)  # fmt: skip
            self.latest.clear()
            return
        for camera, parts in self.latest.items():
            judged = [c["ts_ns"] for c in parts.values() if c["outcome"] != "unproven"]
            if self.metrics is not None and judged:  # a shift's check overdue is seen across restarts
                self.metrics.master_checked.labels(camera).set(max(judged) / 1e9)
            for check in parts.values():
                if not check["ok"]:
                    log.error("%s, before the restart: it stands until that master part is checked right",
                              master_words({**check, "camera": camera}))  # fmt: skip

    def show_current(self, model_sha256: str, threshold: float, mask_sha256: str | None = None) -> None:
        """vqad_master_parts_current, for each camera with checks: whether one of them proves the
        inspection served now (model `model_sha256` at `threshold`, through mask `mask_sha256`).
        Set at the start and at each change of model, threshold or mask; a check sets its
        camera's to 1."""
        if self.metrics is None:
            return
        with self.lock:
            current = {camera: any(proves(check, model_sha256, threshold, mask_sha256)
                                   and check["outcome"] != "unproven" for check in parts.values())
                       for camera, parts in self.latest.items()}  # fmt: skip
        for camera, proving in current.items():
            self.metrics.master_current.labels(camera).set(float(proving))

    def _hold(self, check: dict[str, Any]) -> None:
        """`check` as its master part's latest, its camera the most recent (under the lock). One
        whose frame the model did not judge (unproven) replaces no judged check: that stands (a
        wrong one until the master part is checked right), with the attempt as its `unjudged`."""
        parts = self.latest.get(check["camera"]) or RecentDict(MASTERS_KEPT)
        kept = parts.get(check["part_id"])
        if check["outcome"] == "unproven" and kept is not None and kept["outcome"] != "unproven":
            check = {**kept, "unjudged": check}
        parts[check["part_id"]] = check
        self.latest[check["camera"]] = parts

    def _keep(self) -> None:
        """The checks, whole, in the state folder (under the lock): a handful a shift."""
        if self.kept is not None:
            self.kept.write({camera: dict(parts) for camera, parts in self.latest.items()})

    def state(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Each camera's master parts, each one's latest check (the heartbeat's `master_parts`)."""
        with self.lock:
            return {camera: {part: dict(check) for part, check in sorted(parts.items())}
                    for camera, parts in sorted(self.latest.items())}  # fmt: skip
