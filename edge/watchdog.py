"""The daemon's sign of life to its supervisor, and its check that its loops still come round.

Under systemd (`Type=notify`, `WatchdogSec=`; deploy/vqad.service) the daemon says READY=1 once
it serves, RELOADING=1 while a new package loads, STOPPING=1 on its way out, a STATUS= line for
`systemctl status`, and WATCHDOG=1 while every loop of its pipeline comes round. A loop that
stops coming round (an inference call that never returns: a GPU fault, a driver deadlock) stops
the pings, and systemd restarts the daemon after `WatchdogSec`. With systemd or without, the
stall is a log line, the `vqad_stalled` metric and the heartbeat's `stalled`.

The protocol is one datagram per message on the unix socket named by $NOTIFY_SOCKET
(sd_notify(3)); no library is needed for it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# Without systemd's WATCHDOG_USEC, a loop that has not come round for this long is stalled. A
# batch takes milliseconds on TensorRT and under a second on ONNX Runtime on the slowest CPU
# the daemon was run on (batch 8, 320 x 128); the shipped unit's WatchdogSec=30 gives the same.
STALL_S = 15.0


def notify(message: str) -> bool:
    """Send `message` ("READY=1", "STATUS=...", several joined by newlines) to the service
    manager. -> whether it was sent; False without $NOTIFY_SOCKET or when the socket refuses."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # a socket in the abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.debug("systemd notification %r not sent: %s", message.split("=")[0], exc)
        return False
    return True


def watchdog_interval_s() -> float | None:
    """systemd's watchdog interval for this process ($WATCHDOG_USEC), or None when it set none
    or set it for another process ($WATCHDOG_PID)."""
    usec, pid = os.environ.get("WATCHDOG_USEC", ""), os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


class Liveness:
    """When each named loop last came round. Each loop beats once per turn, from its own thread,
    and says when it has ended on purpose."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def beat(self, loop: str) -> None:
        with self._lock:
            self._last[loop] = time.monotonic()

    def ended(self, loop: str) -> None:
        with self._lock:
            self._last.pop(loop, None)

    def stalled(self, limit_s: float, now: float | None = None) -> dict[str, float]:
        """-> {loop: seconds since it came round} for the loops that have not for over `limit_s`."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return {loop: now - t for loop, t in self._last.items() if now - t > limit_s}


class Watchdog:
    """A thread that checks the loops every quarter of the stall limit, pings systemd while
    none is stalled, and logs a stall once when it begins and once when it ends."""

    def __init__(self, liveness: Liveness, status: Callable[[], str], on_stall: Callable[[bool], None]):
        interval = watchdog_interval_s()
        # Half systemd's interval: a stall found that late still leaves a ping in time before it.
        self.limit_s = interval / 2 if interval else STALL_S
        self.liveness, self.status, self.on_stall = liveness, status, on_stall
        self._stop = threading.Event()
        self._stalled_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    @property
    def stalled(self) -> bool:
        """Whether the last check found a loop that has not come round."""
        return self._stalled_since is not None

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.limit_s / 4):
            self.check()

    def check(self) -> bool:
        """One look at the loops. -> whether they all came round (and systemd was pinged)."""
        stalled = self.liveness.stalled(self.limit_s)
        if stalled:
            what = ", ".join(f"{loop} for {age:.0f} s" for loop, age in sorted(stalled.items()))
            if self._stalled_since is None:
                self._stalled_since = time.monotonic()
                self.on_stall(True)
                log.error(
                    "stalled: not come round: %s (an inference call that does not return?); the watchdog "
                    "is no longer fed",
                    what,
                )
            notify(f"STATUS=stalled: not come round: {what}")
            return False
        if self._stalled_since is not None:
            log.warning("the stall is over after %.1f s", time.monotonic() - self._stalled_since)
            self._stalled_since = None
            self.on_stall(False)
        notify(f"WATCHDOG=1\nSTATUS={self.status()}")
        return True
