"""`HeldFrames`: the frames of the record's buffered results that wait for their evidence,
within a bound of bytes.

Past the bound, a camera that holds more than a newcomer's camera would (a storm of one
camera's fails: its lamp went out) gives up its newest waiting frames, so that the other
cameras' rejects keep their images; otherwise the newcomer waits without its frame. A frame let
go is set to None on its result, which is then recorded without evidence.

Not thread-safe: the record writer's lock guards every call.
"""

from __future__ import annotations

import collections

import numpy as np

from edge.results import Result


class HeldFrames:
    """The frames held, by camera and in the buffer's order, and what the writer thread has
    begun to store (claimed: never given up)."""

    def __init__(self, bound_bytes: int):
        self.bound = bound_bytes
        self.bytes = 0  # of the frames held
        self.let_go = 0  # results whose frame did not fit under the bound
        self._by_camera: collections.Counter[str] = collections.Counter()  # camera -> bytes of its frames held
        # camera -> its buffered results that hold a frame, oldest first: the newest is found at
        # once, not by a walk through a buffer of up to 100,000 results
        self._holding: dict[str, collections.deque[Result]] = {}
        # Ids of the results whose frames the writer thread has begun to store: a frame of the
        # batch it has not reached may still be given up for another camera's reject.
        self._claimed: set[int] = set()

    def hold(self, result: Result) -> int:
        """Keep `result`'s frame waiting if it fits, giving up other cameras' newest frames as
        the module says. -> how many frames were let go (their results' `frame` set to None),
        this result's included."""
        nbytes, camera = result.frame.nbytes, camera_of(result)
        let_go = 0
        while self.bytes + nbytes > self.bound and self._give_up_one_for(camera, nbytes):
            let_go += 1
        if self.bytes + nbytes <= self.bound:
            self.bytes += nbytes
            self._by_camera[camera] += nbytes
            self._holding.setdefault(camera, collections.deque()).append(result)
        else:
            result.frame = None
            let_go += 1
        self.let_go += let_go
        return let_go

    def claim(self, result: Result) -> np.ndarray | None:
        """The frame of `result` for its evidence, None when it waits without one; from now on
        it is not given up."""
        self._claimed.add(id(result))
        return result.frame

    def leave(self, result: Result) -> None:
        """`result` leaves the buffer, which leaves in order: of its camera's frames held, its
        is the oldest."""
        if result.frame is not None:
            self._holding[camera_of(result)].popleft()
            self._release(result)

    def batch_done(self) -> None:
        """The writer thread's batch left the buffer: nothing is claimed."""
        self._claimed = set()

    def _give_up_one_for(self, camera: str, nbytes: int) -> bool:
        """Drop the newest waiting frame of the camera holding the most, if it holds more than
        `camera` would with `nbytes` more and the writer thread is not storing it. -> whether one
        was dropped."""
        most, held = max(self._by_camera.items(), key=lambda item: item[1], default=(None, 0))
        if most is None or most == camera or held <= self._by_camera[camera] + nbytes:
            return False
        holding = self._holding[most]
        if id(holding[-1]) in self._claimed:  # frames are stored oldest first: so are its older ones
            return False
        waiting = holding.pop()
        self._release(waiting)
        waiting.frame = None
        return True

    def _release(self, result: Result) -> None:
        """Its frame no longer waits; the caller took it off self._holding."""
        nbytes, camera = result.frame.nbytes, camera_of(result)
        self.bytes -= nbytes
        self._by_camera[camera] -= nbytes
        if not self._holding[camera]:  # its last frame held
            del self._holding[camera], self._by_camera[camera]


def camera_of(result: Result) -> str:
    return str(result.header.get("camera_id"))
