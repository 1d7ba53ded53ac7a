"""The fail-rate alarm: for each camera, how many of its last WINDOW decisions were fails, against
the line's limit (`edge.fail_rate_alarm`, a share), or the camera's own
(`edge.fail_rate_alarm_cameras`).

A line rejects a few parts in a hundred. When one camera's rejects climb far past that, something
has changed that a person must see to: a tool that marks every part, a new batch of material, or
a camera or threshold that rejects good parts. The drift alarm sees the scores move; this one
sees what the line does with them, in the line's own terms: the share of parts it rejects.

The alarm is raised when the fails among a camera's last WINDOW decisions exceed the limit's
share of WINDOW, and clears when they fall to CLEAR_FRACTION of it. Counting against the whole
window from the first decision, a camera's first few fails after a start raise nothing. Errors
and dropped frames are not decisions and are not counted. A log line, gauges, the heartbeat and
the record's changes say when it is raised and when it clears.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.protocol import unfit_reasons
from edge.recent import RecentDict
from edge.state import KeptFile

if TYPE_CHECKING:
    from edge.metrics import DaemonMetrics

log = logging.getLogger(__name__)

# The decisions a camera's rate is read over. At a limit of 0.2 a line that normally rejects 5%
# (5 of 100, spread 2.2) is 7 spreads below the alarm, and a camera that rejects every part
# raises it at its 21st frame: under a second at 30 frames/s, half a minute at one part a second.
WINDOW = 100
# A raised alarm clears when the fails fall to this share of the limit (16 of 100 at 0.2): a rate
# hovering at the limit would otherwise raise and clear it part after part, as the drift alarm's
# clearing margin keeps its statistic from doing.
CLEAR_FRACTION = 0.8


def fails_words(detail: dict[str, Any]) -> str:
    """A camera's fails among its last decisions (a fail-rate alarm's `detail`) in words."""
    said = f"camera {detail.get('camera')} failed {detail.get('fails')} of its last {detail.get('of')} decisions"
    if detail.get("unfit"):
        said += f" ({detail['unfit']} of them frames the camera health gate found unfit)"
    return said


def mostly_unfit(alarm: dict[str, Any]) -> bool:
    """Whether most of an alarm's fails (its `fails`, `unfit`) are the camera health gate's: the
    camera (its light, focus, position) is to be seen to, not the parts."""
    return 2 * (alarm.get("unfit") or 0) > (alarm.get("fails") or 0)


def fail_rate_words(detail: dict[str, Any]) -> str:
    """A fail-rate alarm's change row (its `detail`) in words, for `vqad records --daily`; the
    dashboard's changes say the same."""
    said = fails_words(detail)
    if detail.get("state") == "raised":
        return f"raised: {said}, over the limit of {100 * float(detail.get('limit') or 0):.0f}%"
    if detail.get("why"):
        return f"cleared, {detail['why']}: counted anew ({said})"
    return f"cleared: {said}"


class _Window:
    """A camera's last `size` decisions ((failed, by the camera health gate)), how many of them
    failed, and how many of those the gate failed (unfit frames: the camera, not the parts)."""

    def __init__(self, size: int):
        self.decisions: collections.deque[tuple[bool, bool]] = collections.deque(maxlen=size)
        self.fails = self.unfit = 0

    def add(self, failed: bool, unfit: bool) -> None:
        if len(self.decisions) == self.decisions.maxlen:
            old_failed, old_unfit = self.decisions[0]
            self.fails -= old_failed
            self.unfit -= old_unfit
        self.decisions.append((failed, unfit))
        self.fails += failed
        self.unfit += unfit


# In the state folder: the cameras whose alarm is raised, kept at each raise and clear. A run
# killed (or stopped) while one was raised leaves its "raised" row with nothing after it in the
# record; the next start names those cameras (`take_left_raised`), whose decisions it counts anew.
FAIL_RATE_FILE = "vqad-serve.fail-rate.json"


class FailRateAlarm:
    """Per camera: `add` (or `count`) each decision in the order they are published; `raised`
    names the cameras whose alarm is raised, and since when. `on_change(change, detail)` is
    told of each raise ("raised") and clear ("cleared"), for the record's changes. `kept`: the
    file that keeps the raised cameras for the next start (`take_left_raised`)."""

    def __init__(
        self,
        limit: float,
        metrics: DaemonMetrics | None = None,
        on_change: Callable[[str, dict[str, Any]], None] | None = None,
        window: int = WINDOW,
        limits: Mapping[str, float] | None = None,
        kept: Path | None = None,
    ):
        """limit: the share of a camera's last `window` decisions that its fails may reach (0:
        none counted); limits: the cameras' own, by camera id, over it (0: that camera's off)."""
        self.limits = dict(limits or {})
        for share in (limit, *self.limits.values()):
            if not 0.0 <= share < 1.0:
                raise ValueError(f"a fail-rate limit must be a share in [0, 1) (0 = off), not {share}")
        self.limit, self.window, self.metrics, self.on_change = limit, window, metrics, on_change
        # A camera id dropped for newer ones takes its window, alarm and gauges with it.
        self.windows: RecentDict[str, _Window] = RecentDict(on_evict=self._forget)
        self.raised: dict[str, int] = {}  # camera -> when its alarm was raised (time_ns)
        self.lock = threading.Lock()
        lost = "an alarm raised when the daemon stops is not named at the next start"
        self.kept = KeptFile(kept, lost) if kept else None

    def count(self, header: dict[str, Any]) -> None:
        """A published result header: its decision is added, unless it is a master part's (its
        `master`, edge/master.py): a part run to prove the inspection is not the line's product,
        and a shift's red rabbits would otherwise count as its rejects."""
        if "master" not in header:
            self.add(header["camera_id"], header["decision"], unfit=unfit_reasons(header) is not None)

    def add(self, camera_id: str, decision: str | None, unfit: bool = False) -> None:
        """One published result's decision ("pass", "fail"; None for an error or a drop: not
        counted, nor is a camera's whose limit is 0); `unfit`: a fail of the camera health gate."""
        limit = self.limit_of(camera_id)
        if decision is None or not limit:
            return
        with self.lock:
            window = self.windows.get(camera_id) or _Window(self.window)
            self.windows[camera_id] = window  # the most recent camera
            window.add(decision == "fail", unfit and decision == "fail")
            was = camera_id in self.raised
            # Strictly more fails than the limit's share of the window raise the alarm; as many as
            # CLEAR_FRACTION of it, or fewer, clear it.
            alarm = window.fails > CLEAR_FRACTION * limit * self.window if was else window.fails > limit * self.window
            if alarm and not was:
                self.raised[camera_id] = time.time_ns()
            elif was and not alarm:
                del self.raised[camera_id]
            if alarm != was:
                self._keep()
            fails, seen, unfit_n = window.fails, len(window.decisions), window.unfit
        if self.metrics is not None:
            self.metrics.fail_rate.labels(camera_id).set(fails / seen)
            self.metrics.fail_rate_alarm.labels(camera_id).set(float(alarm))
        if alarm != was:
            self._tell("raised" if alarm else "cleared", camera_id, fails, seen, unfit_n)

    def start_again(self, camera_id: str, why: str) -> None:
        """Count `camera_id`'s decisions anew: its window is emptied, and a raised alarm clears,
        said with `why` ("camera resumed": a repair or a changeover done while it was paused, whose
        decisions from before would hold the alarm for up to a window of parts)."""
        with self.lock:
            window = self.windows.pop(camera_id, None)
            was = self.raised.pop(camera_id, None) is not None
            if was:
                self._keep()
        if self.metrics is not None:
            self.metrics.forget_fail_rate(camera_id)
        if was and window is not None:
            self._tell("cleared", camera_id, window.fails, len(window.decisions), window.unfit, why)

    def start_all_again(self, why: str) -> None:
        """`start_again` for every camera (`why`: the model, the threshold or the inspection mask
        changed, whose fails before say nothing of the inspection served now)."""
        with self.lock:
            cameras = list(self.windows)
        for camera_id in cameras:
            self.start_again(camera_id, why)

    def limit_of(self, camera_id: str) -> float:
        """The share of its last decisions that `camera_id`'s fails may reach (0: not counted)."""
        return self.limits.get(camera_id, self.limit)

    def _tell(self, change: str, camera_id: str, fails: int, seen: int, unfit: int, why: str | None = None) -> None:
        limit = self.limit_of(camera_id)
        detail = {"camera": camera_id, "fails": fails, "of": seen, "limit": limit, "unfit": unfit}
        if why is not None:  # cleared by a start again, not by the camera's decisions
            detail["why"] = why
        if change == "raised":
            whose = "its own" if camera_id in self.limits else "the line's"
            see_to = ("the camera: most of its frames are unfit" if mostly_unfit(detail)
                      else "the process (a tool, the material) and to the camera")  # fmt: skip
            log.warning("fail-rate alarm: %s, over %s limit of %.0f%%: see to %s", fails_words(detail), whose,
                        100 * limit, see_to)  # fmt: skip
        elif why is not None:
            log.info("fail-rate alarm cleared, %s: its decisions are counted anew (%s)", why, fails_words(detail))
        else:
            log.info("fail-rate alarm cleared: %s", fails_words(detail))
        if self.on_change is not None:
            self.on_change(change, detail)

    def state(self) -> dict[str, Any]:
        """What the heartbeat says: the limit, the cameras' own, the window, and each raised
        alarm's camera with its fails among its last `of` decisions (`window`, once it has made
        as many), how many of them the camera health gate made, the limit they are over, and
        when it was raised (time_ns)."""
        with self.lock:
            windows = {camera: self.windows[camera] for camera in sorted(self.raised) if camera in self.windows}
            alarms = {
                camera: {"fails": w.fails, "of": len(w.decisions), "since_ns": self.raised[camera],
                         "limit": self.limit_of(camera), "unfit": w.unfit}
                for camera, w in windows.items()
            }  # fmt: skip
        return {"limit": self.limit, "limits": dict(self.limits), "window": self.window, "alarms": alarms}

    def _forget(self, camera_id: str, _window: object) -> None:
        if self.raised.pop(camera_id, None) is not None:
            self._keep()
        if self.metrics is not None:
            self.metrics.forget_fail_rate(camera_id)

    def take_left_raised(self) -> list[str]:
        """At the start, the state folder held: the cameras whose alarm the run before left
        raised (`left_raised`), its decisions counted anew here; the file then names this run's."""
        left = left_raised(self.kept.path) if self.kept is not None else []
        with self.lock:
            self._keep()
        if left:
            log.info("the fail-rate alarm the run before left raised on %s: its decisions are counted anew",
                     ", ".join(left))  # fmt: skip
        return left

    def _keep(self) -> None:
        """The raised cameras, whole, in the state folder (under the lock): a handful a day."""
        if self.kept is not None:
            self.kept.write({"raised": sorted(self.raised)})


def left_raised(path: Path) -> list[str]:
    """The cameras whose fail-rate alarm the run before left raised, as its `path` keeps them:
    none without the file, or from one unreadable (warned of)."""
    if not path.is_file():
        return []
    try:
        return sorted(str(camera) for camera in json.loads(path.read_text())["raised"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s is unreadable (%s): the fail-rate alarms the run before left raised are not named", path, exc)
        return []


def end_left_raised(path: Path) -> list[str]:
    """At the start of a run with the fail-rate alarm off: the cameras the run before left
    raised (`left_raised`), whose alarm ends here. The file goes, so that a later run with the
    alarm on does not name them again."""
    left = left_raised(path)
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("%s cannot be removed (%s): a later run with the fail-rate alarm on names its cameras", path, exc)
    if left:
        log.info("the fail-rate alarm the run before left raised on %s ends: the alarm is off in this run",
                 ", ".join(left))  # fmt: skip
    return left
