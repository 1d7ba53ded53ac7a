"""Other boxes' dashboards, asked for the pictures that a record they share names on their disks.

Each box's daemon writes its evidence to its own disk, and the record names the files. A
dashboard that shows another box's rejects (a plant's view over a shared PostgreSQL record)
finds the rows but not the files. With `peers` (configs/dashboard.yaml), it asks the dashboards
of the other boxes for such a picture, by the same API path the page uses (`/api/image/...
?result=ID`), and sends on what one of them has.

A peer answers a peer's request from its own disk alone (`PEER_HEADER`), so that two
dashboards that name each other never pass a request back and forth. The peer that had a daemon
run's pictures is asked first for that run's next ones; one that did not answer is left alone
for DOWN_FOR_S, so that a box switched off costs a gallery one timeout, not one per picture.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from edge.recent import RecentDict

log = logging.getLogger(__name__)

# Sent with a request to a peer: answer from this machine's disk, never ask your own peers.
PEER_HEADER = "x-vqad-peer"
# A peer on the plant network answers a picture within a second; a box switched off or
# unreachable is given up on after this long (the page's picture shows why meanwhile).
TIMEOUT_S = 3.0
# A peer that did not answer is not asked again for this long: a gallery of a dozen pictures
# would otherwise wait a dozen timeouts.
DOWN_FOR_S = 30.0
# The largest picture sent on: a full-size frame as received is a few MB; a bigger answer is
# not a picture of ours.
MAX_PICTURE_BYTES = 64 * 2**20
# How a dashboard says that a picture the record names is not on its own disk (app.py).
NOT_HERE = "not on this machine's disk"
# Daemon runs whose peer is remembered: each box starts a run per restart, a few a week.
RUNS_KEPT = 4096


@dataclass(frozen=True)
class Picture:
    """A picture a peer sent: its bytes and their media type."""

    content: bytes
    media_type: str


@dataclass
class PeerMiss:
    """Why no peer sent the picture: each peer's answer, and the message of one that says the
    picture was removed (its disk quota), if any did."""

    answers: dict[str, str] = field(default_factory=dict)
    removed: str | None = None

    def describe(self) -> str:
        return "; ".join(f"{peer}: {answer}" for peer, answer in self.answers.items())


class Peers:
    """The other boxes' dashboards (their base URLs, with the path a proxy serves them under),
    and the token they require ("" for none)."""

    def __init__(self, urls: tuple[str, ...], token: str = ""):
        self.urls = tuple(url.rstrip("/") for url in urls)
        self.token = token
        self._run_peer: RecentDict[str, str] = RecentDict(RUNS_KEPT)
        self._down_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.urls)

    def fetch(self, row: dict[str, Any], kind: str) -> Picture | PeerMiss:
        """The picture `kind` (overlay or frame) of the recorded result `row` (its id, camera_id,
        frame_id and daemon_run) from the first peer that has it; the peer that had the run's
        pictures before is asked first, a peer that did not answer lately not at all."""
        path = f"/api/image/{quote(str(row['camera_id']), safe='')}/{row['frame_id']}/{kind}?result={row['id']}"
        run = row.get("daemon_run")
        miss = PeerMiss()
        now = time.monotonic()
        with self._lock:
            first = self._run_peer.get(run) if run else None
            down = {url for url in self.urls if self._down_until.get(url, 0.0) > now}
        for url in sorted(self.urls, key=lambda url: url != first):  # stable: the configured order otherwise
            if url in down:
                miss.answers[url] = f"not asked: it did not answer within the last {DOWN_FOR_S:.0f} s"
                continue
            answer = self._ask(url, path)
            if isinstance(answer, Picture):
                if run:
                    with self._lock:
                        self._run_peer[run] = url
                return answer
            status, message = answer
            miss.answers[url] = message
            if status == 410:
                miss.removed = message
        return miss

    def _ask(self, url: str, path: str) -> Picture | tuple[int, str]:
        """One peer's picture, or (its HTTP status, or 0 when it did not answer; why)."""
        headers = {PEER_HEADER: "1"} | ({"Authorization": f"Bearer {self.token}"} if self.token else {})
        request = urllib.request.Request(url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                content = response.read(MAX_PICTURE_BYTES + 1)
                if len(content) > MAX_PICTURE_BYTES:
                    return 502, f"sent more than {MAX_PICTURE_BYTES // 2**20} MiB"
                media_type = response.headers.get_content_type()
                if not media_type.startswith("image/"):
                    return 502, f"sent {media_type}, not a picture"
                return Picture(content, media_type)
        except urllib.error.HTTPError as exc:  # the peer answered: not there, removed, refused
            message = _error_message(exc)
            return exc.code, "not on its disk either" if message.startswith(NOT_HERE) else message
        except (OSError, ValueError) as exc:  # refused, timed out, unreachable, not HTTP
            with self._lock:
                self._down_until[url] = time.monotonic() + DOWN_FOR_S
            log.warning("dashboard peer %s did not answer (%s); not asked again for %.0f s", url, exc, DOWN_FOR_S)
            return 0, f"did not answer ({getattr(exc, 'reason', exc)})"


def _error_message(exc: urllib.error.HTTPError) -> str:
    """A peer's refusal in words: its API's `error`, else the HTTP status."""
    try:
        body = json.loads(exc.read(64 * 1024) or b"{}")
    except (ValueError, OSError):
        body = {}
    error = body.get("error") if isinstance(body, dict) else None
    return str(error) if error else f"HTTP {exc.code}"
