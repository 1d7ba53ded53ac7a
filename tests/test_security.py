"""CURVE's authorised keys on a running line: a camera's key copied into the folder, or taken
out of it, without a restart (edge.security)."""

from __future__ import annotations

import logging
import shutil
import time

import zmq

from edge.security import CurveGate, create_keys, make_curve_client, make_curve_server
from edge.transport import bind_again


def _curve_socket(ctx: zmq.Context, kind: int, client_secret, server_public, endpoint: str) -> zmq.Socket:
    """A CURVE client socket of `kind` (a SUB takes every topic) connected to `endpoint`."""
    sock = ctx.socket(kind)
    sock.linger = 0
    make_curve_client(sock, client_secret, server_public)
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


def _heard(server: zmq.Socket, client_secret, server_public, ctx: zmq.Context, message: bytes) -> bool:
    """Whether a new client with the key pair `client_secret` gets `message` to `server` within 1.5 s."""
    client = _curve_socket(ctx, zmq.PUSH, client_secret, server_public, server.last_endpoint.decode())
    # A refused handshake can end the connection before the send: PUSH then has no peer, and a
    # send without a timeout waits for one for ever.
    client.sndtimeo = 1500
    try:
        try:
            client.send(message)
        except zmq.Again:
            return False
        if server.poll(1500):
            assert server.recv() == message
            return True
        return False
    finally:
        client.close(linger=0)


def test_a_key_added_or_removed_on_a_running_line_is_heeded_at_the_next_connection(tmp_path, caplog):
    """A line that runs for months gains a camera: its key was read at the start only, so the
    new camera stayed unheard until a restart stopped the line. A key removed (a camera retired,
    a key leaked) now refuses its next connection; a folder emptied or a key file half copied
    keeps the keys read before, and says so."""
    caplog.set_level(logging.INFO, logger="edge.security")
    clients, others = tmp_path / "clients", tmp_path / "others"
    server_public, server_secret = create_keys(tmp_path, "server")
    cam0 = create_keys(clients, "cam0")[1]
    cam1_public, cam1 = create_keys(others, "cam1")
    ctx = zmq.Context()
    auth = CurveGate(ctx, str(clients))
    server = ctx.socket(zmq.PULL)
    server.linger = 0
    make_curve_server(server, server_secret)
    server.bind("tcp://127.0.0.1:*")
    try:
        assert _heard(server, cam0, server_public, ctx, b"cam0 at the start")
        assert not _heard(server, cam1, server_public, ctx, b"cam1 before its key")
        shutil.copy(cam1_public, clients)  # the integrator adds the new camera's key
        assert _heard(server, cam1, server_public, ctx, b"cam1 with its key")
        assert "2 authorised client key(s)" in caplog.text and "(1 added, 0 removed" in caplog.text

        (clients / "cam0.key").unlink()  # cam0 retired
        assert not _heard(server, cam0, server_public, ctx, b"cam0 retired")
        assert _heard(server, cam1, server_public, ctx, b"cam1 still")

        (clients / "cam2.key").write_bytes(b"")  # a copy under way
        assert _heard(server, cam1, server_public, ctx, b"cam1 while a key is copied")
        assert "No public key found in" in caplog.text and "cam2.key" in caplog.text
        (clients / "cam2.key").unlink()
        (clients / "cam1.key").unlink()  # the folder emptied (a deploy script's first step)
        time.sleep(0.01)
        assert _heard(server, cam1, server_public, ctx, b"cam1 with the folder empty")
        assert "holds no public key" in caplog.text and "the 1 key(s) read before stay authorised" in caplog.text
    finally:
        server.close(linger=0)
        auth.stop()
        ctx.term()


def test_a_removed_key_is_refused_on_the_connections_it_holds(tmp_path, caplog):
    """CURVE checks a key at the handshake only: a camera whose key was removed went on sending
    on the connection it held, and a subscriber went on reading, until they reconnected. Their
    messages are now refused as they arrive (AllowList.admits), and binding the results socket
    again (transport.bind_again) makes every subscriber hand-shake again, the removed one in vain."""
    caplog.set_level(logging.INFO, logger="edge.security")
    clients = tmp_path / "clients"
    server_public, server_secret = create_keys(tmp_path, "server")
    secrets = {name: create_keys(clients, name)[1] for name in ("kept", "gone")}
    ctx = zmq.Context()
    gate = CurveGate(ctx, str(clients))
    pull, pub = ctx.socket(zmq.PULL), ctx.socket(zmq.PUB)
    for sock in (pull, pub):
        sock.linger = 0
        make_curve_server(sock, server_secret)
        sock.bind("tcp://127.0.0.1:*")
    endpoints = {sock: sock.last_endpoint.decode() for sock in (pull, pub)}
    senders = {n: _curve_socket(ctx, zmq.PUSH, s, server_public, endpoints[pull]) for n, s in secrets.items()}
    readers = {n: _curve_socket(ctx, zmq.SUB, s, server_public, endpoints[pub]) for n, s in secrets.items()}

    def admitted(name: str) -> bool:
        senders[name].send(name.encode())
        assert pull.poll(5000), f"{name}'s message did not arrive"
        message = pull.recv_multipart(copy=False)
        assert message[0].bytes == name.encode()
        return gate.keys.admits(message[0], "frames")

    def heard(wanted: set[str]) -> set[str]:
        """The readers that hear what the socket publishes every 50 ms: until `wanted` have
        (5 s at most), and 0.5 s more."""
        got, end = set(), time.monotonic() + 5.0
        while time.monotonic() < end:
            pub.send(b"result")
            time.sleep(0.05)
            got |= {name for name, reader in readers.items() if reader.poll(0) and reader.recv()}
            if wanted <= got:
                end = min(end, time.monotonic() + 0.5)
        return got

    try:
        assert admitted("kept") and admitted("gone")
        assert heard({"kept", "gone"}) == {"kept", "gone"}

        (clients / "gone.key").unlink()  # the camera retired, or its key leaked
        assert gate.keys.refresh() == 1
        assert admitted("kept") and not admitted("gone")
        assert "refused frames from a client whose key" in caplog.text and "was removed from" in caplog.text
        for reader in readers.values():  # what each heard before the cut
            while reader.poll(0):
                reader.recv()
        bind_again(pub, endpoints[pub])
        assert heard({"kept"}) == {"kept"}
    finally:
        for sock in (pull, pub, *senders.values(), *readers.values()):
            sock.close(linger=0)
        gate.stop()
        ctx.term()


def test_binding_again_after_a_bind_that_failed_binds_the_endpoint():
    """A bind that failed after its unbind (the port taken meanwhile) is tried again a second
    later: that try found nothing to unbind, refused, and the results socket stayed unbound."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    try:
        pub.bind("tcp://127.0.0.1:*")
        endpoint = pub.last_endpoint.decode()
        pub.unbind(endpoint)  # where a failed try leaves it
        bind_again(pub, endpoint)
        sub = ctx.socket(zmq.SUB)  # a plain reader: the socket under test has no CURVE
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoint)
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not sub.poll(50):
                pub.send(b"result")
            assert sub.poll(0) and sub.recv() == b"result"
        finally:
            sub.close(linger=0)
    finally:
        pub.close(linger=0)
