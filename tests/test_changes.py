"""A change made to the daemon in words (edge.changes): what `vqad records --daily` prints and
the dashboard's `/api/daily` answers as `said`, for the page to show."""

from __future__ import annotations

import pytest

from edge.changes import change_words
from edge.fail_rate import fails_words

MODEL = {"name": "m", "sha256": "ab" * 32}
WHOLE, MASKED = {"mask_sha256": None, "inspected_share": 1.0}, {"mask_sha256": "cd" * 32, "inspected_share": 0.9712}
BEHIND = {"behind": "the model package's export", "behind_at": "2026-12-05T23:07:00Z", "behind_s": 1795981582.5}


@pytest.mark.parametrize(
    ("kind", "detail", "said"),
    [
        (
            "set-threshold",
            {"from": 1.0848056, "to": 0.894, "reason": "audit 42"},
            "threshold 1.08481 → 0.894: audit 42",
        ),
        (
            "threshold-dropped",
            {"from": 2.5, "to": 1.01, "set_by": "ann"},
            "threshold 2.5 (set by ann) dropped at a start: 1.01 serves",
        ),
        (
            "reload",
            {"from": MODEL, "to": MODEL, "threshold": {"from": 1.0, "to": 1.0}},
            "model m abababababab reloaded",
        ),
        (
            "reload",
            {"from": MODEL, "to": {"name": "n", "sha256": "cd" * 32}, "threshold": {"from": 1.25, "to": 0.9}},
            "model m abababababab → n cdcdcdcdcdcd, threshold 1.25 → 0.9",
        ),
        ("reload", {"from": MODEL, "to": MODEL}, "model m abababababab reloaded"),  # recorded without its threshold
        (
            "reload",
            {
                "from": MODEL,
                "to": MODEL,
                "threshold": {"from": 1.0, "to": 0.8},
                "inspection": {"from": WHOLE, "to": MASKED},
            },
            "model m abababababab reloaded, threshold 1 → 0.8, judging the whole frame → 97.1% of the frame "
            "(inspection mask)",
        ),  # fmt: skip
        (
            "reload",
            {"from": MODEL, "to": MODEL, "inspection": {"from": WHOLE, "to": WHOLE}},
            "model m abababababab reloaded",
        ),
        (
            "start",
            {"model": MODEL, "threshold": 0.8, "inspection": MASKED, "previous_exit": "clean"},
            "vqad serve started: model m abababababab, threshold 0.8, judging 97.1% of the frame (inspection mask)",
        ),
        (
            "start",
            {"model": MODEL, "threshold": 0.8, "inspection": WHOLE, "previous_exit": "clean"},
            "vqad serve started: model m abababababab, threshold 0.8",
        ),
        (
            "start",
            {"model": MODEL, "threshold": 1.01, "run": "5f0c" * 8, "vqad_version": "0.1.0", "previous_exit": "unclean"},
            "vqad 0.1.0 serve run 5f0c5f0c5f0c started: model m abababababab, threshold 1.01; the run before it ended "
            "without stopping (killed, crashed or the power lost)",
        ),
        (
            "start",
            {"model": None, "threshold": 1.01, "previous_exit": "clean", "clock": BEHIND},
            "vqad serve started: model –, threshold 1.01; the box's clock read 20,787 days before the model "
            "package's export (2026-12-05)",
        ),
        (
            "stop",
            {"cause": "SIGTERM", "published": 25, "fail_rate_alarms": ["cam1"], "daemon": {"run": "9a1e" * 8}},
            "vqad serve run 9a1e9a1e9a1e stopped (SIGTERM) after 25 results, the fail-rate alarm raised on cam1",
        ),
        (
            "clock",
            {"stepped_s": 1795981582.5, "from": "1970-01-07T03:20:59Z", "to": "2026-12-06T04:14:19Z"},
            "the box's clock set forward by 20,787 days (1970-01-07T03:20:59Z → 2026-12-06T04:14:19Z): results "
            "before it keep the old time",
        ),
        (
            "clock",
            {"stepped_s": -7200, "from": "2026-12-06T06:14:19Z", "to": "2026-12-06T04:14:19Z"},
            "the box's clock set back by 2.0 h (2026-12-06T06:14:19Z → 2026-12-06T04:14:19Z): results before it "
            "keep the old time",
        ),
        (
            "fail-rate-alarm",
            {"state": "raised", "camera": "cam1", "fails": 21, "of": 21, "limit": 0.2},
            "fail-rate alarm raised: camera cam1 failed 21 of its last 21 decisions, over the limit of 20%",
        ),
        (
            "fail-rate-alarm",
            {"state": "cleared", "camera": "cam1", "fails": 3, "of": 30, "why": "camera resumed"},
            "fail-rate alarm cleared, camera resumed: counted anew (camera cam1 failed 3 of its last 30 decisions)",
        ),
        (
            "record-set-aside",
            {"damaged": "/var/lib/vqad/line.db.damaged-1", "reason": "disk image is malformed"},
            "the record was damaged (disk image is malformed): set aside as /var/lib/vqad/line.db.damaged-1, and "
            "this record started in its place",
        ),
        (
            "start",
            {
                "model": MODEL,
                "threshold": 1.01,
                "previous_exit": "unclean",
                "fail_rate_alarms_left": ["press1", "trim"],
            },
            "vqad serve started: model m abababababab, threshold 1.01; the run before it ended without stopping "
            "(killed, crashed or the power lost); the fail-rate alarm it left raised on press1, trim counted anew",
        ),
        (
            "start",
            {
                "model": {"name": "m", "sha256": "ab" * 32},
                "threshold": 1.01,
                "fail_rate_alarms_ended": ["press1"],
                "previous_results_without_row": {"run": "5f0c", "without_row": 27},
            },
            "vqad serve started: model m abababababab, threshold 1.01; at least 27 results of the run before it have "
            "no row (its subscribers had them); the fail-rate alarm it left raised on press1 ended: the alarm is off",
        ),
        (
            "start",
            {
                "model": MODEL,
                "threshold": 1.01,
                "previous_exit": "unclean",
                "previous_results_recovered": {"run": "5f0c", "recovered": 368},
            },
            "vqad serve started: model m abababababab, threshold 1.01; the run before it ended without stopping "
            "(killed, crashed or the power lost); 368 results of the run before it put back from its journal (it "
            "ended before they were committed), without their images",
        ),  # fmt: skip
        (
            "start",
            {
                "model": MODEL,
                "threshold": 1.01,
                "previous_results_recovered": {"run": "5f0c", "recovered": 40, "with_images": 32},
            },
            "vqad serve started: model m abababababab, threshold 1.01; 40 results of the run before it put back from "
            "its journal (it ended before they were committed), 32 with their images",
        ),  # fmt: skip
        ("pause", {"camera": "press1"}, "camera press1 paused"),
        ("resume", {"camera": "press1"}, "camera press1 resumed"),
        ("calibrate-twice", {"a": 1}, 'calibrate-twice {"a": 1}'),  # a newer vqad's kind, on a shared record
    ],
)
def test_each_change_is_said_in_words(kind, detail, said):
    assert change_words(kind, detail) == said


def test_a_lamp_outs_fail_rate_alarm_says_its_fails_are_the_cameras():
    dark = {"state": "raised", "camera": "cam1", "fails": 21, "of": 21, "limit": 0.2, "unfit": 15}
    assert (
        change_words("fail-rate-alarm", dark) == f"fail-rate alarm raised: {fails_words(dark)}, over the limit of 20%"
    )
    assert "(15 of them frames the camera health gate found unfit)" in change_words("fail-rate-alarm", dark)
