"""A bounded frame queue with Triton-style dynamic batching and two overload policies.

- A batch goes out as soon as `max_batch` items wait, or when the oldest waiting item
  has waited `max_delay_s` (measured from when it was queued, not from when the batcher
  started looking).
- `backpressure`: `put` blocks while the queue is full; the reader stops reading and
  ZeroMQ's high-water mark pushes back on the cameras.
- `drop_oldest`: `put` never blocks; when full, an old item is evicted and returned to the
  caller, who reports it as dropped. Nothing disappears silently. With a `source` (the
  camera), the item evicted is the oldest of the source with the most items waiting: a camera
  that floods the daemon (a wrong frame rate, a trigger that bounces) loses its own frames,
  not the other cameras'. With one source, it is the oldest item.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")

POLICIES = ("backpressure", "drop_oldest")


class FrameQueue(Generic[T]):
    def __init__(self, capacity: int, policy: str = "backpressure", source: Callable[[T], Hashable] | None = None):
        """source: where an item came from (its camera), for drop_oldest to evict from the
        source with the most items waiting; None: every item from one source."""
        if capacity < 1:
            raise ValueError("queue capacity must be >= 1")
        if policy not in POLICIES:
            raise ValueError(f"unknown overload policy {policy!r}; use one of {POLICIES}")
        self.capacity, self.policy = capacity, policy
        self._source = source or (lambda _item: None)
        self._items: collections.deque[tuple[float, T]] = collections.deque()
        self._cond = threading.Condition()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: T, timeout: float | None = None) -> tuple[bool, list[T]]:
        """Queue `item`. -> (queued, evicted). With backpressure, waits up to `timeout`
        for room and returns (False, []) if none came; with drop_oldest, always queues."""
        now = time.monotonic()
        with self._cond:
            evicted: list[T] = []
            if self.policy == "drop_oldest":
                while len(self._items) >= self.capacity:
                    evicted.append(self._evict())
            elif len(self._items) >= self.capacity:
                if not self._cond.wait_for(lambda: len(self._items) < self.capacity, timeout):
                    return False, []
                now = time.monotonic()
            self._items.append((now, item))
            self._cond.notify_all()
            return True, evicted

    def _evict(self) -> T:
        """Remove the oldest item of the source with the most items waiting (the first of them
        to have queued, on a tie). Called with the lock held."""
        sources = [self._source(item) for _, item in self._items]
        waiting = collections.Counter(sources)
        most = max(waiting.values())
        index = next(i for i, source in enumerate(sources) if waiting[source] == most)
        item = self._items[index][1]
        del self._items[index]
        return item

    def get_batch(self, max_batch: int, max_delay_s: float, timeout: float) -> list[T]:
        """Wait up to `timeout` for a first item, then return a batch by the rules above."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._items:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(remaining)
            while len(self._items) < max_batch:
                oldest_t = self._items[0][0]
                remaining = oldest_t + max_delay_s - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
                if not self._items:  # drained by someone else meanwhile
                    return []
            n = min(max_batch, len(self._items))
            batch = [self._items.popleft()[1] for _ in range(n)]
            self._cond.notify_all()
            return batch

    def drain(self) -> list[T]:
        """Remove and return everything queued."""
        with self._cond:
            items = [item for _, item in self._items]
            self._items.clear()
            self._cond.notify_all()
            return items
