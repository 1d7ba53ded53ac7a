"""A wall clock a file sets, for a daemon process under test: a box that boots in 1970, and
whose clock NTP or a person steps later.

Imported before `vqad` by the process's launch (tests.edge_helpers.DaemonProcess's
`wall_clock`): time.time and time.time_ns read the real clock plus the offset in seconds that
the file VQAD_WALL_CLOCK_FILE holds, read again whenever the file changes. The monotonic clock
is left alone, as a clock set on a real box leaves it. (libfaketime's LD_PRELOAD does the same
outside Python, but its timed waits hang or fail with EINVAL under Python 3.11's threads.)
"""

from __future__ import annotations

import os
import time

_FILE = os.environ["VQAD_WALL_CLOCK_FILE"]
_real_time_ns = time.time_ns
_offset: tuple[int, int] = (-1, 0)  # (the file's mtime_ns when read, the offset in ns)


def _offset_ns() -> int:
    global _offset
    try:
        mtime = os.stat(_FILE).st_mtime_ns
    except OSError:
        return _offset[1]
    if mtime != _offset[0]:
        with open(_FILE) as fh:
            text = fh.read().strip()
        if text:  # a file caught half written keeps the offset before it
            _offset = (mtime, int(float(text) * 1e9))
    return _offset[1]


def time_ns() -> int:
    return _real_time_ns() + _offset_ns()


def wall_time() -> float:
    return time_ns() / 1e9


time.time_ns, time.time = time_ns, wall_time
