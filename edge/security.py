"""CURVE encryption and client authentication, with pyzmq's own zmq.auth.

`vqad keys DIR [--name NAME]` writes a key pair (NAME.key public, NAME.key_secret secret).
The daemon loads its secret key, and accepts only clients whose public key file is in
`authorized_keys_dir`. A refused peer is logged (and counted): an unknown key by the
credentials callback, a peer that fails the handshake before it (no keys, another server key)
by HandshakeRefusals.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from edge.errors import ConfigError
from edge.logrepeat import RepeatedLog

if TYPE_CHECKING:
    from edge.metrics import DaemonMetrics

log = logging.getLogger(__name__)


def create_keys(folder: str | Path, name: str, replace: bool = False) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret into `folder`; returns (public, secret) paths. An
    existing pair is kept (ConfigError) unless `replace`: every peer that trusts its public key
    would be locked out by a new one."""
    folder = Path(folder)
    if not name or Path(name).name != name or name in (".", ".."):
        raise ConfigError(f"a key's name is a plain file name, got {name!r}")
    existing = [p for p in (folder / f"{name}.key", folder / f"{name}.key_secret") if p.exists()]
    if existing and not replace:
        raise ConfigError(
            f"{existing[0]} exists: peers that trust it would be locked out by a new key; pass --force to replace it"
        )
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def load_keypair(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) from a .key_secret file; ConfigError when missing or without a secret."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"CURVE key file not found: {path}")
    public, secret = zmq.auth.load_certificate(str(path))
    if not secret:
        raise ConfigError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def load_public_key(path: str | Path) -> bytes:
    """The public key of a .key (or .key_secret) file; ConfigError when missing."""
    if not Path(path).is_file():
        raise ConfigError(f"CURVE key file not found: {path}")
    public, _ = zmq.auth.load_certificate(str(path))
    return public


def authorized_keys(keys_dir: str | Path) -> set[bytes]:
    """The public keys of the clients allowed in: every key file in `keys_dir`. ConfigError when
    there is none: such a daemon would refuse every camera and subscriber, and `vqad serve
    --check` would have passed it."""
    if not keys_dir:
        raise ConfigError("curve.enabled needs curve.authorized_keys_dir (the clients' public keys)")
    folder = Path(keys_dir)
    if not folder.is_dir():
        raise ConfigError(f"CURVE authorized_keys_dir not found: {folder}")
    allowed = set(zmq.auth.load_certificates(str(folder)).keys())
    if not allowed:
        raise ConfigError(
            f"CURVE authorized_keys_dir {folder} holds no public key (*.key): every camera and subscriber would be "
            "refused; copy theirs there (vqad keys DIR --name NAME writes a pair)"
        )
    return allowed


class AllowList:
    """zmq.auth credentials provider: the authorised public keys, logging each refusal. The
    folder is looked at again at each handshake, and every second by the daemon (`refresh`; a
    few stats): a new camera's key copied there is taken, and a key removed refuses its next
    connection, its messages on the connections it holds (`admits`), and, once the results'
    socket is bound again, its subscription, without a restart of the line. A folder left
    without keys, or with a key file that does not parse (one being copied), keeps the keys
    read before, with a warning, until it reads whole again."""

    def __init__(self, keys_dir: str, metrics: DaemonMetrics | None) -> None:
        self.folder = Path(keys_dir)
        self.allowed = authorized_keys(keys_dir)
        self.read_as = _key_files(self.folder)
        self.removals = 0  # how many readings took a key away: the results' socket is bound again at each
        self._lock = threading.Lock()  # the authenticator's thread and the daemon's read the folder
        self.metrics, self.refusals, self.removed_said = metrics, RepeatedLog(log), RepeatedLog(log)
        log.info("CURVE on: %d authorised client key(s) from %s", len(self.allowed), keys_dir)

    def callback(self, domain: str, key: bytes) -> bool:
        self.refresh()
        if key in self.allowed:
            return True
        # A refused peer reconnects every 100 ms or so, for as long as it runs.
        self.refusals.log("CURVE: refused a peer with unknown public key %s", key.decode(errors="replace"))
        self._count_refusal()
        return False

    def admits(self, first_part: zmq.Frame, what: str) -> bool:
        """Whether a message received on a CURVE socket (its first part, received with
        copy=False) came from a key authorised now. CURVE checks a key at the handshake only: a
        client whose key was removed keeps its connection, and its messages are refused here
        (logged, counted in vqad_curve_refusals); `what` names them in the log."""
        try:
            key = first_part.get("User-Id").encode()  # the authenticator's user id: the key in z85
        except zmq.ZMQError:  # no user id: a socket without the authenticator
            return True
        if key in self.allowed:
            return True
        self.removed_said.log("CURVE: refused %s from a client whose key %s was removed from %s", what,
                              key.decode(errors="replace"), self.folder)  # fmt: skip
        self._count_refusal()
        return False

    def refresh(self) -> int:
        """Read the folder again if its key files changed -> `removals`, which rises with each
        reading that took a key away."""
        with self._lock:
            files = _key_files(self.folder)
            if files != self.read_as:
                self.read_as = files
                self._read_again()
            return self.removals

    def _read_again(self) -> None:
        try:
            allowed = authorized_keys(self.folder)
        except (ConfigError, OSError, ValueError) as exc:  # ValueError: a key file half written
            log.warning("CURVE: %s; the %d key(s) read before stay authorised", exc, len(self.allowed))
            return
        added, removed = len(allowed - self.allowed), len(self.allowed - allowed)
        self.allowed = allowed
        self.removals += bool(removed)
        log.info("CURVE: %d authorised client key(s) from %s now (%d added, %d removed)", len(allowed),
                 self.folder, added, removed)  # fmt: skip

    def _count_refusal(self) -> None:
        if self.metrics is not None:
            self.metrics.curve_refusals.inc()


def _key_files(folder: Path) -> frozenset[tuple[str, int, int]] | None:
    """What the folder's public key files are now: (name, size, mtime) each; None without the
    folder."""
    try:
        return frozenset((p.name, (st := p.stat()).st_size, st.st_mtime_ns) for p in folder.glob("*.key"))
    except OSError:
        return None


class CurveGate:
    """A CURVE server process's authenticator and the keys it lets in (`keys`); `stop()` before
    the context ends."""

    def __init__(self, ctx: zmq.Context, keys_dir: str, metrics: DaemonMetrics | None = None) -> None:
        self.keys = AllowList(keys_dir, metrics)
        self.auth = ThreadAuthenticator(ctx, log=logging.getLogger("edge.security.zap"))
        self.auth.start()
        self.auth.configure_curve_callback(domain="*", credentials_provider=self.keys)

    def stop(self) -> None:
        self.auth.stop()


def make_curve_server(sock: zmq.Socket, secret_key_file: str) -> None:
    public, secret = load_keypair(secret_key_file)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def make_curve_client(
    sock: zmq.Socket, client_secret_file: str | Path | None, server_public_file: str | Path | None
) -> None:
    """`sock` as a CURVE client: this client's key pair and the daemon's public key. ConfigError
    when either is missing (a client without the other would go unheard, or in the clear)."""
    if not client_secret_file or not server_public_file:
        raise ConfigError("CURVE needs both this client's secret key (--curve-secret, its .key_secret) and the "
                          "daemon's public key (--curve-server-key, its .key)")  # fmt: skip
    public, secret = load_keypair(client_secret_file)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = load_public_key(server_public_file)


# The handshakes a CURVE server fails before its authenticator is asked (libzmq >= 4.3 reports
# them). A peer that only connects and leaves (a port check) fails without detail: not counted.
_FAILED_PROTOCOL = getattr(zmq, "EVENT_HANDSHAKE_FAILED_PROTOCOL", 0)
_MECHANISM_MISMATCH = getattr(zmq, "PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH", 0x11000002)
_CRYPTOGRAPHIC = getattr(zmq, "PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC", 0x11000001)


class HandshakeRefusals(threading.Thread):
    """Logs and counts (vqad_curve_refusals) the peers a CURVE daemon's sockets refuse before its
    authenticator sees them: one whose hello it cannot read (another server key), and one
    without keys when this side reads its greeting first (when the peer's side does, it closes,
    and says so itself). Only unknown keys reached the log. The monitors are made on the
    sockets before their threads use them; `stop()` before the context ends."""

    def __init__(self, socks: dict[str, zmq.Socket], metrics: DaemonMetrics | None) -> None:
        super().__init__(name="curve-refusals", daemon=True)
        self.monitors = {sock.get_monitor_socket(_FAILED_PROTOCOL): name for name, sock in socks.items()}
        self.metrics, self.stopping = metrics, threading.Event()
        self.said: dict[tuple[str, int], RepeatedLog] = {}  # a line every so often per socket and cause

    def run(self) -> None:
        poller = zmq.Poller()
        for monitor in self.monitors:
            poller.register(monitor, zmq.POLLIN)
        while not self.stopping.is_set():
            for monitor, _ in poller.poll(200):
                self._refused(self.monitors[monitor], recv_monitor_message(monitor))

    def _refused(self, socket_name: str, event: dict) -> None:
        why = {
            _MECHANISM_MISMATCH: "a peer without CURVE keys",
            _CRYPTOGRAPHIC: "a peer whose CURVE hello it cannot read (another server key?)",
        }.get(event["value"], f"a peer's handshake (protocol error {event['value']:#x}: a client of another socket?)")
        where = event["endpoint"].decode(errors="replace")
        said = self.said.setdefault((socket_name, event["value"]), RepeatedLog(log))
        said.log("CURVE: the %s socket (%s) refused %s", socket_name, where, why)
        if self.metrics is not None:
            self.metrics.curve_refusals.inc()

    def stop(self) -> None:
        self.stopping.set()
        self.join(2.0)
        for monitor in self.monitors:
            monitor.close(linger=0)


def watch_refusals(socks: dict[str, zmq.Socket | None], metrics: DaemonMetrics | None) -> HandshakeRefusals | None:
    """A started HandshakeRefusals on the daemon's CURVE sockets (None where the libzmq reports
    no handshake events)."""
    if not _FAILED_PROTOCOL:
        return None
    refusals = HandshakeRefusals({name: sock for name, sock in socks.items() if sock is not None}, metrics)
    refusals.start()
    return refusals
