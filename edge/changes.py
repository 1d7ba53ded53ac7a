"""A change made to the daemon, a row of the record's `events` (`vqad ctl`, SIGHUP, the daemon's
own starts and stops, a step of the box's clock, a camera's fail-rate alarm), in words: one way
for every reader. `vqad records --daily` prints them, and the dashboard's `/api/daily` answers
each change's `said`, which the page shows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from edge.clock import span, step_words
from edge.fail_rate import fail_rate_words
from edge.inspection import judged_words

# The kinds whose words name the model (a start's, a reload's from and to): a listing that
# names the model of each change leaves it out of theirs.
NAMES_MODEL = ("start", "reload")


def change_words(kind: str, detail: dict[str, Any] | None) -> str:
    """The change `kind` with its row's `detail` in words; one of a kind this vqad does not know
    (a newer vqad's, on a record boxes share) as its kind and detail."""
    detail = detail or {}
    said = _WORDS.get(kind)
    return said(detail) if said else f"{kind} {json.dumps(detail, default=str)}"


def said_each(changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The record's change rows (Record.events), each with its `said`: as `/api/daily` and
    `vqad records --daily --format json` answer them."""
    return [{**e, "said": change_words(e["kind"], e["detail"])} for e in changes]


def _number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, int | float) and not isinstance(value, bool) else "–"


def _model(model: Any) -> str:
    return (
        f"{model.get('name')} {str(model['sha256'])[:12]}" if isinstance(model, dict) and model.get("sha256") else "–"
    )


def _run(detail: dict[str, Any]) -> str:
    """' run 5f0c1a2b3c4d': the daemon run the change's results name, where the row says it."""
    run = detail.get("run") or (detail.get("daemon") or {}).get("run")
    return f" run {str(run)[:12]}" if run else ""


def _set_threshold(d: dict[str, Any]) -> str:
    reason = f": {d['reason']}" if d.get("reason") else ""
    return f"threshold {_number(d.get('from'))} → {_number(d.get('to'))}{reason}"


def _threshold_dropped(d: dict[str, Any]) -> str:
    return (f"threshold {_number(d.get('from'))} (set by {d.get('set_by') or '–'}) dropped at a start: "
            f"{_number(d.get('to'))} serves")  # fmt: skip


def _reload(d: dict[str, Any]) -> str:
    before, after = d.get("from") or {}, d.get("to") or {}
    same = bool(before.get("sha256")) and before.get("sha256") == after.get("sha256")
    said = f"model {_model(after)} reloaded" if same else f"model {_model(before)} → {_model(after)}"
    threshold = d.get("threshold")  # absent from the reloads an older vqad recorded
    if isinstance(threshold, dict) and threshold.get("from") != threshold.get("to"):
        said += f", threshold {_number(threshold.get('from'))} → {_number(threshold.get('to'))}"
    inspection = d.get("inspection")  # absent from the reloads an older vqad recorded
    if isinstance(inspection, dict) and _masks(inspection.get("from")) != _masks(inspection.get("to")):
        said += f", judging {judged_words(inspection.get('from'))} → {judged_words(inspection.get('to'))}"
    return said


def _masks(note: object) -> object:
    return note.get("mask_sha256") if isinstance(note, dict) else None


def _start(d: dict[str, Any]) -> str:
    version = f" {d['vqad_version']}" if d.get("vqad_version") else ""
    said = (
        f"vqad{version} serve{_run(d)} started: model {_model(d.get('model'))}, threshold {_number(d.get('threshold'))}"
    )
    if _masks(d.get("inspection")):
        said += f", judging {judged_words(d['inspection'])}"
    if d.get("previous_exit") == "unclean":
        said += "; the run before it ended without stopping (killed, crashed or the power lost)"
    back = d.get("previous_results_recovered")
    if isinstance(back, dict) and back.get("recovered"):
        imaged = back.get("with_images") or 0
        images = f"{imaged} with their images" if imaged else "without their images"
        said += (f"; {back['recovered']} results of the run before it put back from its journal (it ended before "
                 f"they were committed), {images}")  # fmt: skip
    lost = d.get("previous_results_without_row")
    if isinstance(lost, dict) and lost.get("without_row"):
        said += f"; at least {lost['without_row']} results of the run before it have no row (its subscribers had them)"
    if d.get("fail_rate_alarms_left"):
        cameras = ", ".join(map(str, d["fail_rate_alarms_left"]))
        said += f"; the fail-rate alarm it left raised on {cameras} counted anew"
    if d.get("fail_rate_alarms_ended"):
        cameras = ", ".join(map(str, d["fail_rate_alarms_ended"]))
        said += f"; the fail-rate alarm it left raised on {cameras} ended: the alarm is off"
    clock = d.get("clock")
    if isinstance(clock, dict):
        said += (f"; the box's clock read {span(float(clock.get('behind_s') or 0))} before {clock.get('behind')} "
                 f"({str(clock.get('behind_at') or '')[:10]})")  # fmt: skip
    return said


def _stop(d: dict[str, Any]) -> str:
    raised = d.get("fail_rate_alarms")
    with_alarms = f", the fail-rate alarm raised on {', '.join(map(str, raised))}" if raised else ""
    return f"vqad serve{_run(d)} stopped ({d.get('cause')}) after {d.get('published')} results{with_alarms}"


_WORDS: dict[str, Callable[[dict[str, Any]], str]] = {
    "set-threshold": _set_threshold,
    "threshold-dropped": _threshold_dropped,
    "reload": _reload,
    "start": _start,
    "stop": _stop,
    "clock": lambda d: f"the box's clock {step_words(d)}: results before it keep the old time",
    "fail-rate-alarm": lambda d: f"fail-rate alarm {fail_rate_words(d)}",
    "record-set-aside": lambda d: (
        f"the record was damaged ({d.get('reason')}): set aside as {d.get('damaged')}, "
        "and this record started in its place"
    ),
    "pause": lambda d: f"camera {d.get('camera')} paused",
    "resume": lambda d: f"camera {d.get('camera')} resumed",
}
