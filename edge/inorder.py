"""Work done side by side, handed on in the order it came: the daemon's frame decoding.

A 1280 x 1024 JPEG takes about 6 ms to read into the model's input on a core of a 2-core AMD
EPYC (a PNG 29 ms), so one receiver thread caps a daemon near 170 such frames a second (34 as
PNG), whatever the GPU does. `InOrder` runs that work on a pool of threads (OpenCV releases the
GIL) and hands each result on from one thread of its own, in the order the items came: the
checks that follow (a frozen camera, frame ids that go back, the queue's order) see each
camera's frames as it sent them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

Done = TypeVar("Done")

_STOP = object()


class InOrder(Generic[Done]):
    """`work(*args)` on `workers` threads; `then(result)` on one thread (named `name`), in the
    order of `submit`. At most `window` items wait behind the one being handed on: `submit`
    waits (calling `waiting` each tenth of a second) while the window is full, which passes
    backpressure on to the caller. `work` must not raise (it returns what failed); an
    exception of `then` ends the ordering thread through `guard` (which reports it) and makes
    `submit` raise."""

    def __init__(
        self,
        workers: int,
        work: Callable[..., Done],
        then: Callable[[Done], None],
        window: int,
        name: str,
        beat: Callable[[], None] = lambda: None,
        guard: Callable[[Callable[[], None]], Callable[[], None]] = lambda run: run,
    ) -> None:
        if workers < 1 or window < 1:
            raise ValueError(f"InOrder needs workers >= 1 and window >= 1, got {workers}, {window}")
        self._work, self._then, self._beat = work, then, beat
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"{name}-work")
        self._in_flight: queue.Queue[Any] = queue.Queue(maxsize=window)
        self._thread = threading.Thread(target=guard(self._hand_on), name=name, daemon=True)
        self._thread.start()

    def submit(self, *args: Any, waiting: Callable[[], None] = lambda: None) -> None:
        """Start `work(*args)`; its result goes to `then` after every earlier one's."""
        future = self._pool.submit(self._work, *args)
        while True:
            if not self._thread.is_alive():
                raise RuntimeError(f"the {self._thread.name} thread has stopped")
            try:
                self._in_flight.put(future, timeout=0.1)
                return
            except queue.Full:
                waiting()

    def close(self, timeout: float = 30.0) -> None:
        """Hand on everything submitted (within `timeout`), then stop the threads."""
        if self._thread.is_alive():
            try:
                self._in_flight.put(_STOP, timeout=timeout)
            except queue.Full:
                pass
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _hand_on(self) -> None:
        while True:
            self._beat()
            try:
                future = self._in_flight.get(timeout=0.1)
            except queue.Empty:
                continue
            if future is _STOP:
                return
            # No beat while a result is awaited: work that never returns shows as a stall.
            self._then(future.result())
