"""The daemon's ZeroMQ sockets: frames in (PULL bound, or SUB connected to cameras), results
out (PUB bound), and CURVE authentication when the config enables it."""

from __future__ import annotations

import errno
import os
import socket
import time
from typing import TYPE_CHECKING

import zmq
from zmq.utils.monitor import recv_monitor_message

from edge.endpoints import check_endpoint
from edge.errors import ConfigError, HandshakeError
from edge.metrics import DaemonMetrics
from edge.protocol import HEARTBEAT_TOPIC, RESULT_TOPIC_PREFIX
from edge.settings import EdgeConfig

if TYPE_CHECKING:
    from edge.security import CurveGate


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS's pick), for a process about to bind it: the
    demo's, the benchmarks' and the tests' daemons and dashboards."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_auth(ctx: zmq.Context, cfg: EdgeConfig, metrics: DaemonMetrics) -> CurveGate | None:
    """The CURVE authenticator and its keys (None when CURVE is off)."""
    if not cfg.curve.enabled:
        return None
    from edge.security import CurveGate

    return CurveGate(ctx, cfg.curve.authorized_keys_dir, metrics)


def connect(sock: zmq.Socket, endpoint: str, what: str) -> None:
    """sock.connect(endpoint) after check_endpoint; ZeroMQ's refusal becomes a ConfigError."""
    check_endpoint(endpoint, f"the {what} endpoint")
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise ConfigError(f"cannot connect the {what} socket to {endpoint}: {exc.strerror}") from exc


def bind(sock: zmq.Socket, endpoint: str, what: str, who: str = "the daemon") -> None:
    """sock.bind(endpoint); an endpoint that is taken (another daemon still running) or
    refused closes the socket and is one clear error, naming `who` binds, instead of a
    traceback. EdgeConfig has checked the endpoint's form (check_endpoint)."""
    try:
        if ipc_in_use(endpoint):
            raise zmq.ZMQError(errno.EADDRINUSE, "the path is in use by another process")
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise ConfigError(f"{who} cannot bind its {what} socket to {endpoint}: {exc.strerror}") from exc


# How long a socket's endpoint may take to be free again after its unbind: ZeroMQ's I/O thread
# closes the listener (a few ms on a 2-core box).
REBIND_S = 1.0


def bind_again(sock: zmq.Socket, endpoint: str) -> None:
    """Close every connection of a bound socket by binding its endpoint (the one it was bound
    to: LAST_ENDPOINT) again. Its clients reconnect within ZeroMQ's reconnect interval (0.1 s),
    each through a new handshake. ZMQError when the endpoint cannot be bound again within
    REBIND_S; a call after that binds it (its unbind was done)."""
    try:
        sock.unbind(endpoint)
    except zmq.ZMQError as exc:
        if exc.errno != errno.ENOENT:  # ENOENT: unbound by a try that could not bind it again
            raise
    give_up = time.monotonic() + REBIND_S
    while True:
        try:
            sock.bind(endpoint)
            return
        except zmq.ZMQError as exc:  # EADDRINUSE while ZeroMQ's I/O thread closes the listener
            if exc.errno != errno.EADDRINUSE or time.monotonic() > give_up:
                raise
            time.sleep(0.01)


def ipc_in_use(endpoint: str) -> bool:
    """Whether a process listens on the ipc:// path: ZeroMQ would take the path over from it
    without a word (and that process would go deaf), where a TCP port is refused."""
    path = endpoint.removeprefix("ipc://")
    if path == endpoint or path.startswith("@") or not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:  # a file left by a process that is gone: ZeroMQ replaces it
            return False
    return True


def secure_server(sock: zmq.Socket, cfg: EdgeConfig) -> None:
    """A daemon's socket as a CURVE server, when its config turns CURVE on."""
    if cfg.curve.enabled:
        from edge.security import make_curve_server

        make_curve_server(sock, cfg.curve.server_secret_key)


def secure_client(sock: zmq.Socket, curve_secret: str | None, curve_server_key: str | None) -> None:
    """A client's socket (camera, watch, dashboard, ctl) as a CURVE client when either key is
    given; edge.security refuses one without the other."""
    if curve_secret or curve_server_key:
        from edge.security import make_curve_client

        make_curve_client(sock, curve_secret, curve_server_key)


# The monitor's handshake events (libzmq >= 4.3). Without them (an older libzmq), a client learns
# of a refused handshake only from the silence that follows.
_SUCCEEDED = getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", 0)
_NO_DETAIL = getattr(zmq, "EVENT_HANDSHAKE_FAILED_NO_DETAIL", 0)
_FAILED = {
    getattr(zmq, name, 0): name
    for name in ("EVENT_HANDSHAKE_FAILED_NO_DETAIL", "EVENT_HANDSHAKE_FAILED_PROTOCOL", "EVENT_HANDSHAKE_FAILED_AUTH")
}
_MECHANISM_MISMATCH = getattr(zmq, "PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH", 0x11000002)


class HandshakeWatch:
    """Whether a client socket's connection got through the daemon's handshake. ZeroMQ retries a
    refused one without a word: a camera with the wrong CURVE keys said "sent 122 frames" of
    frames the daemon never had, and a subscriber heard nothing with no reason given. Made
    before the socket connects, so that no event is missed."""

    def __init__(
        self,
        sock: zmq.Socket,
        endpoint: str,
        who: str,
        serves: str,
        curve: bool,
        keys: tuple[str, str] = ("--curve-secret", "--curve-server-key"),
    ) -> None:
        """who: what this side is ("camera"); serves: which of the daemon's endpoints it connects
        to ("frames"); curve: whether it uses CURVE keys; keys: where its secret key and the
        daemon's public key are given. All for the messages."""
        self.sock, self.endpoint, self.who, self.serves = sock, endpoint, who, serves
        self.curve, self.keys = curve, keys
        self.succeeded = False  # a handshake got through (the last event said so)
        self.vague = 0  # failures without detail in a row: one often comes before the one that says why
        # A connection made whose handshake has no outcome yet. Closed so, it was refused without
        # an event: a plain camera at the daemon's results socket, which reads the other
        # side's socket type first, or a port that is no ZeroMQ socket.
        self.handshaking = False
        self.accepted_once = False  # a handshake got through once: this is the daemon's socket of that kind
        available = _SUCCEEDED and 0 not in _FAILED
        events = _SUCCEEDED | sum(_FAILED) | zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED if available else 0
        self.monitor = sock.get_monitor_socket(events) if available else None

    def refusal(self, wait_s: float = 0.0) -> str | None:
        """The reason the daemon refused the last handshake, or None (none refused, or it got
        through since); waits up to `wait_s` for a first outcome while there is none."""
        deadline = time.monotonic() + wait_s
        reason = None
        while self.monitor is not None:
            left_ms = max(0, int((deadline - time.monotonic()) * 1000)) if not (reason or self.succeeded) else 0
            if not self.monitor.poll(left_ms):
                return reason
            event, value, vague = self._outcome(recv_monitor_message(self.monitor))
            if event is None:
                continue
            self.succeeded = event == _SUCCEEDED
            self.vague = self.vague + 1 if vague else 0
            said = not self.succeeded and (not vague or self.vague > 1)  # a vague one when it comes again
            reason = self._reason(event, value) if said else None
        return None

    def _outcome(self, event: dict) -> tuple[int | None, int, bool]:
        """(a handshake's outcome, its value, whether it is a failure without detail that may
        come before one that says why) from a monitor event; None for a connection made, or
        closed after its outcome was known (a daemon that stops). A connection closed in its
        handshake is a failure without detail too, and final: ZeroMQ gives such a connection
        up (it does not connect again), so it comes only once. Once a handshake got through, the
        endpoint is known to be right, and such a close is a daemon that stops as it starts."""
        if event["event"] == zmq.EVENT_CONNECTED:
            self.handshaking = True
            return None, 0, False
        if event["event"] == zmq.EVENT_DISCONNECTED:
            refused, self.handshaking = self.handshaking and not self.accepted_once, False
            return (_NO_DETAIL, 0, False) if refused else (None, 0, False)
        self.handshaking = False
        self.accepted_once |= event["event"] == _SUCCEEDED
        return event["event"], event["value"], event["event"] == _NO_DETAIL

    def check(self) -> None:
        """HandshakeError when the daemon refused the last handshake (refusal)."""
        if why := self.refusal():
            raise HandshakeError(why)

    def _reason(self, event: int, value: int) -> str:
        daemon, who, (secret, server) = f"the daemon at {self.endpoint}", f"this {self.who}", self.keys
        kind, endpoint = _FAILED.get(event), f"is {self.endpoint} its {self.serves} endpoint"
        if kind == "EVENT_HANDSHAKE_FAILED_AUTH":
            return (
                f"{daemon} refused {who}'s CURVE key (status {value}): is its public key in the daemon's "
                "edge.curve.authorized_keys_dir?"
            )
        if kind == "EVENT_HANDSHAKE_FAILED_PROTOCOL" and value == _MECHANISM_MISMATCH:
            if self.curve:
                return (
                    f"{daemon} does not use CURVE, and {who} does: leave out {secret} and {server}, "
                    "or turn its curve on"
                )
            return f"{daemon} refused {who}'s connection: it uses CURVE, and {who} has no keys ({secret}, {server})"
        if kind == "EVENT_HANDSHAKE_FAILED_PROTOCOL":
            return f"{daemon} refused {who}'s connection (protocol error {value:#x}): {endpoint}?"
        # Without detail, the other side closed first: it could not read this side's hello
        # (another server key), it uses CURVE where this side does not or the reverse, or it is
        # another of the daemon's sockets (frames, results, control).
        if self.curve:
            return (
                f"the CURVE handshake with {daemon} failed: is {server} the daemon's public key (its server.key), "
                f"does the daemon use CURVE (edge.curve), and {endpoint}?"
            )
        return (
            f"{daemon} closed {who}'s connection in its handshake: does it use CURVE (then give {secret} and "
            f"{server}), and {endpoint}?"
        )

    def close(self) -> None:
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None


def frames_socket(ctx: zmq.Context, cfg: EdgeConfig, who: str = "the daemon") -> zmq.Socket:
    """The socket frames come in on, as `cfg` sets it (bound PULL, or SUB connected to the
    cameras), with CURVE when it is on; `who` takes them, for a refused bind's error."""
    sock = ctx.socket(zmq.PULL if cfg.frames_mode == "pull" else zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, cfg.rcvhwm)
    sock.setsockopt(zmq.MAXMSGSIZE, cfg.max_frame_bytes + cfg.max_header_bytes)
    sock.setsockopt(zmq.LINGER, 0)
    secure_server(sock, cfg)
    if cfg.frames_mode == "pull":
        bind(sock, cfg.frames_endpoint, "frames", who)
    else:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        for endpoint in cfg.camera_endpoints:
            connect(sock, endpoint, "camera")
    return sock


def results_socket(ctx: zmq.Context, cfg: EdgeConfig) -> zmq.Socket:
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, cfg.sndhwm)
    sock.setsockopt(zmq.LINGER, cfg.linger_ms)
    secure_server(sock, cfg)
    bind(sock, cfg.results_endpoint, "results")
    return sock


def results_subscriber(
    ctx: zmq.Context,
    endpoint: str,
    rcvhwm: int,
    camera: str | None = None,
    curve_secret: str | None = None,
    curve_server_key: str | None = None,
    who: str = "subscriber",
    keys: tuple[str, str] = ("--curve-secret", "--curve-server-key"),
) -> tuple[zmq.Socket, HandshakeWatch]:
    """A SUB socket on the daemon's results (one camera's, or every camera's) and its heartbeats,
    as `vqad watch` and the dashboard read them, and the watch on its handshakes (`who` and `keys`
    name this side in its messages). Past `rcvhwm` unread messages ZeroMQ drops this
    subscriber's: PUB never blocks, so a slow reader never slows the daemon. The topic prefix of
    one camera also matches longer ids: the reader filters on the header's camera_id."""
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    secure_client(sock, curve_secret, curve_server_key)
    sock.setsockopt(zmq.SUBSCRIBE, RESULT_TOPIC_PREFIX + (camera.encode() if camera else b""))
    sock.setsockopt(zmq.SUBSCRIBE, HEARTBEAT_TOPIC)
    handshakes = HandshakeWatch(sock, endpoint, who, "results", bool(curve_secret or curve_server_key), keys)
    connect(sock, endpoint, "results")
    return sock, handshakes


def message_parts(frames: list[zmq.Frame]) -> list[bytes | memoryview]:
    """The header as bytes; a large payload as a view of ZeroMQ's own buffer, not a copy
    (a 1280x1024 raw frame is 3.9 MB; the resize reads it once and the view is then dropped)."""
    return [f.buffer if i > 0 and len(f) >= 65536 else f.bytes for i, f in enumerate(frames)]
