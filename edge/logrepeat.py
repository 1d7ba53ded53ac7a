"""A log line for a fault that may repeat at line rate for months: a camera sending garbage, a
peer with an unknown key reconnecting every 100 ms, a backend failing every batch.
`RepeatedLog` writes the first occurrence at once, then at most one line a minute, which counts
the ones it held back; the counts a dashboard needs are the metrics'."""

from __future__ import annotations

import logging
import threading
import time

# At most a line a minute per fault: 1,440 lines a day whatever the rate, and a fault that
# starts is seen at once.
EVERY_S = 60.0


class RepeatedLog:
    """`log(message, *args)` writes to `logger` at `level` when a line is due; the others are counted
    and their number is appended to the next line written. Thread-safe."""

    def __init__(self, logger: logging.Logger, level: int = logging.WARNING, every_s: float = EVERY_S):
        self.logger, self.level, self.every_s = logger, level, every_s
        self.held = 0  # occurrences since the last line written
        self.total = 0
        self._next_s = float("-inf")
        self._lock = threading.Lock()

    def log(self, message: str, *args: object) -> bool:
        """Count one occurrence; write it when due. -> whether a line was written."""
        now = time.monotonic()
        with self._lock:
            self.total += 1
            if now < self._next_s:
                self.held += 1
                return False
            held, self.held, self._next_s = self.held, 0, now + self.every_s
        if held:
            message += f" ({held} more like it in the last {self.every_s:g} s, {self.total} in all)"
        self.logger.log(self.level, message, *args)
        return True

    def reset(self) -> None:
        """The fault is over: the next occurrence is a new one, written at once."""
        with self._lock:
            self.held, self._next_s = 0, float("-inf")
