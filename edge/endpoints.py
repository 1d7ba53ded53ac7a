"""ZeroMQ endpoint strings, checked before a socket sees them: libzmq answers a malformed one
with a bare "Invalid argument", and binds tcp://HOST:99999 to another port without a word."""

from __future__ import annotations

from edge.errors import ConfigError

# The transports vqad's sockets are used with; libzmq knows a few more (pgm, ws, vmci) that
# the line does not need and that most builds leave out.
SCHEMES = ("tcp", "ipc", "inproc")


def check_endpoint(endpoint: str, what: str) -> str:
    """The endpoint, if it names one of SCHEMES and, for tcp://, a host and a port in 0–65535
    or `*`; ConfigError (a ValueError) otherwise, whose message starts with `what` ("the
    results endpoint", "edge.frames_endpoint")."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep or not rest or scheme not in SCHEMES:
        raise ConfigError(f"{what} {endpoint!r} is not a ZeroMQ endpoint: expected tcp://HOST:PORT or ipc://PATH")
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host or not (port == "*" or (port.isdigit() and int(port) <= 65535)):
            raise ConfigError(f"{what} {endpoint!r} needs tcp://HOST:PORT, a port from 0 to 65535 or *")
    return endpoint
