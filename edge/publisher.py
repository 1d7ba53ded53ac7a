"""The daemon's publisher thread: every result out on the PUB socket, and to the record; and
every `heartbeat_s` a heartbeat on the same socket.

Single results (errors, drops) go out at once; batches in the order they were numbered (with
several inference workers, batch n+1 can finish before batch n).
"""

from __future__ import annotations

import logging
import queue
import time
from typing import TYPE_CHECKING

import zmq

from edge import transport
from edge.inspection import mask_given
from edge.protocol import heartbeat_message, result_message
from edge.results import BatchResults, Result

if TYPE_CHECKING:
    from edge.daemon import Daemon

log = logging.getLogger(__name__)

STOP = object()  # put in the daemon's outbox when nothing more will come
# The longest wait for a result before the loop comes round (and beats, edge.watchdog).
TURN_S = 0.1
# How often the loop looks at how far behind the record is (edge.record.writer.watch_lag), at
# this machine's clock (edge.clock), and at the CURVE keys' folder (edge.security.AllowList).
LAG_CHECK_S = 1.0


class Publisher:
    def __init__(self, daemon: Daemon):
        self.d = daemon
        self.key_removals = 0  # the CURVE keys' removals whose subscribers were cut off

    def run(self) -> None:
        sock = self.d.results_sock
        held: dict[int, list[Result]] = {}
        next_seq = 0
        every = self.d.cfg.heartbeat_s
        next_beat = next_lag_check = time.monotonic()
        try:
            while True:
                if every and time.monotonic() >= next_beat:  # on this thread: a socket is not thread-safe
                    self.heartbeat(sock)
                    next_beat = time.monotonic() + every
                if time.monotonic() >= next_lag_check:
                    self.d.watch_clock()
                    if self.d.recorder is not None:
                        self.d.recorder.watch_lag()  # here, not on the writer's thread, which may be the one held
                    self.cut_off_removed_keys(sock)
                    next_lag_check = time.monotonic() + LAG_CHECK_S
                self.d.liveness.beat("publisher")
                wait = min(next_beat - time.monotonic(), TURN_S) if every else TURN_S
                try:
                    item = self.d.outbox.get(timeout=max(0.0, wait))
                except queue.Empty:
                    continue
                if item is STOP:
                    break
                if not isinstance(item, BatchResults):
                    self.publish(sock, item)
                    continue
                held[item.seq] = item.items
                while next_seq in held:
                    for result in held.pop(next_seq):
                        self.publish(sock, result)
                    next_seq += 1
            for seq in sorted(held):  # only after a worker died mid-batch: publish rather than lose
                for result in held.pop(seq):
                    self.publish(sock, result)
        finally:
            sock.close(linger=self.d.cfg.linger_ms)

    def cut_off_removed_keys(self, sock: zmq.Socket) -> None:
        """With CURVE on, a subscriber whose key was removed stops receiving results: the socket
        is bound again, which closes every connection, and the handshakes that follow refuse
        that key. Every other subscriber reconnects within 0.1 s; the results published
        meanwhile reach none of them (a subscriber sees the gap in `seq`, and the record keeps
        them). A bind that fails is tried again at the next look."""
        curve = self.d.curve
        if curve is None or (removals := curve.keys.refresh()) == self.key_removals:
            return
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT) or self.d.cfg.results_endpoint
        try:
            transport.bind_again(sock, endpoint)
        except zmq.ZMQError as exc:
            log.error("cannot bind the results socket to %s again, to cut off a removed CURVE key's "
                      "subscribers: %s; trying again in %.0f s", endpoint, exc.strerror, LAG_CHECK_S)  # fmt: skip
            return
        self.key_removals = removals
        log.warning("CURVE: a client key was removed: the results socket (%s) was bound again, so that its "
                    "subscribers reconnect through a new handshake", endpoint)  # fmt: skip

    def heartbeat(self, sock: zmq.Socket) -> None:
        """The daemon's sign of life: its model, threshold and counts (docs/protocol.md)."""
        header = {"ts_ns": time.time_ns(), "every_s": self.d.cfg.heartbeat_s, **self.d.state()}
        if (note := header["inspection"]) is not None:
            # The mask itself, for a subscriber's pictures (edge.inspection.StreamMasks): a few
            # hundred bytes for a few rectangles, at most a few KB; and how it was given, which a
            # command adding to it repeats. Of the package state() named (a reload may have
            # swapped it since).
            serving = self.d.serving
            mask = serving.mask if serving else None
            same = mask is not None and mask.sha256 == note["mask_sha256"]
            header["inspection"] = {
                **note,
                "mask_png": mask.png_base64 if same else None,
                "given": mask_given(serving.package.meta.get("inspection")) if same else None,
            }
        sock.send_multipart(heartbeat_message(header))

    def publish(self, sock: zmq.Socket, result: Result) -> None:
        d, header = self.d, result.header
        total_ms = result.ms_since_arrival()
        header["latency_ms"]["total"] = round(total_ms, 3)
        header["run"], header["seq"] = d.run_id, d.published  # the stream's order (this thread alone counts)
        if d.masters is not None:
            d.masters.check(header)  # a master part's result says whether it got its expected decision
        # Counted before it is sent: a program that has a result then reads it in the metrics.
        d.metrics.results.labels(header["status"], header["decision"] or "none").inc()
        if d.fail_rate is not None:
            d.fail_rate.count(header)
        if header["status"] == "ok":
            d.metrics.latency.labels("total").observe(total_ms)
        sock.send_multipart(result_message(header, result.published_map, result.extra))
        if d.recorder is not None:
            d.recorder.put(result, time.time_ns())
        with d._count_lock:
            d.published += 1
