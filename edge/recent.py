"""`RecentDict`: per-camera state with a bound. The daemon and the dashboard keep a little state
for every camera id they meet (the last frame's digest, the drift window, the live view), for as
long as they run. A sender that names each part as a camera would make that one entry per part,
for months; bounded, it costs at most `capacity` entries, and a line's real cameras, which send
all the time, stay."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

# The daemon's per-camera state (health, frame previews, drift windows): far more cameras than a
# box serves, so that a real camera is never dropped (a drift window dropped before it fills
# would never alarm), at about 2 KB each at most.
CAMERAS_KEPT = 1024


class RecentDict(collections.OrderedDict[K, V]):
    """A dict of at most `capacity` keys: setting a key makes it the most recent, and setting a
    new one past the capacity drops the key set longest ago, and calls `on_evict(key, value)`
    for it (to drop what else was kept for that key, e.g. its metrics)."""

    def __init__(self, capacity: int = CAMERAS_KEPT, on_evict: Callable[[K, V], None] | None = None):
        if capacity < 1:
            raise ValueError("a RecentDict needs a capacity of at least 1")
        super().__init__()
        self.capacity = capacity
        self.on_evict = on_evict

    def __setitem__(self, key: K, value: V) -> None:
        if key in self:
            self.move_to_end(key)
        super().__setitem__(key, value)
        if len(self) > self.capacity:
            old_key, old_value = self.popitem(last=False)
            if self.on_evict is not None:
                self.on_evict(old_key, old_value)

    def setdefault(self, key: K, default: V) -> V:  # type: ignore[override]
        value = self[key] if key in self else default
        self[key] = value  # the most recent either way
        return value
