"""CURVE encryption and client authentication, with pyzmq's own zmq.auth.

`vqad keys DIR [--name NAME]` writes a key pair (NAME.key public, NAME.key_secret secret).
The daemon loads its secret key, and accepts only clients whose public key file is in
`authorized_keys_dir`. A refused peer is logged (and counted) by the credentials callback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

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
    there is none: the authenticator reads them once, so such a daemon refuses every camera and
    subscriber until it is restarted, and `vqad serve --check` passed it."""
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


class _AllowList:
    """zmq.auth credentials provider: the authorised public keys, logging each refusal."""

    def __init__(self, keys_dir: str, metrics: DaemonMetrics | None) -> None:
        self.allowed = authorized_keys(keys_dir)
        self.metrics, self.refusals = metrics, RepeatedLog(log)
        log.info("CURVE on: %d authorised client key(s) from %s", len(self.allowed), keys_dir)

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.allowed:
            return True
        # A refused peer reconnects every 100 ms or so, for as long as it runs.
        self.refusals.log("CURVE: refused a peer with unknown public key %s", key.decode(errors="replace"))
        if self.metrics is not None:
            self.metrics.curve_refusals.inc()
        return False


def start_authenticator(ctx: zmq.Context, keys_dir: str, metrics: DaemonMetrics | None = None) -> ThreadAuthenticator:
    provider = _AllowList(keys_dir, metrics)
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("edge.security.zap"))
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=provider)
    return auth


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
