"""A throwaway PostgreSQL cluster from Debian's `postgresql` package, on a Unix socket (or a
loopback TCP port), for the record's tests and benchmarks. Run as the `postgres` user when we are root."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def postgres_bin(name: str) -> str | None:
    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)


@contextmanager
def throwaway_postgres(port: int = 5439, tcp: bool = False) -> Iterator[str]:
    """Start a new cluster, yield its SQLAlchemy URL (database "postgres", user "vqad"), stop it.
    tcp: listen on 127.0.0.1:`port` and connect there, instead of on a Unix socket only."""
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        raise FileNotFoundError("PostgreSQL is not installed (apt-get install postgresql)")
    # Not under a private temporary folder: the server's user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="vqad-pg-", dir="/tmp"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    root_user = os.geteuid() == 0
    user = "postgres" if root_user else pwd.getpwuid(os.geteuid()).pw_name
    prefix = ["runuser", "-u", user, "--"] if root_user else []
    if root_user:
        shutil.chown(root, user)
        shutil.chown(sock, user)
    env = dict(os.environ, LC_ALL="C")
    try:
        subprocess.run([*prefix, initdb, "-D", str(data), "-U", "vqad", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True, env=env)  # fmt: skip
        listen = "127.0.0.1" if tcp else ""
        options = f"-k {sock} -c listen_addresses='{listen}' -p {port} -c fsync=off"
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
                       check=True, capture_output=True, env=env)  # fmt: skip
        host = "127.0.0.1" if tcp else sock
        yield f"postgresql+psycopg://vqad@/postgres?host={host}&port={port}"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, env=env)
        shutil.rmtree(root, ignore_errors=True)
