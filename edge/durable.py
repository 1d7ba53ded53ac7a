"""Files that outlast a power cut. A line's box is often switched off with the line, and the
kernel keeps what was written in memory for up to 30 s (vm.dirty_expire_centisecs) before it
reaches the disk, while a database keeps its commits its own way (PostgreSQL syncs each one;
a SQLite record in WAL with synchronous=NORMAL may lose its last transactions, never the file).
A row that outlasts the cut and names a file still in memory then names an empty or cut file:
on ext4, a new file whose blocks were not yet allocated comes back with 0 bytes. So a file that
a record will name is synced before the record commits, and a folder that gained a name is
synced too; a file that a start reads is replaced whole (`replace_synced`).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path


def write_synced(path: str | Path, data: bytes, sync: bool = True) -> None:
    """Write `data` to `path` and wait until it is on the disk (fsync; not with `sync` False).
    OSError as the disk says (a full disk: ENOSPC), naming the file, and no part of the file is
    left. The folder's new entry is synced by `sync_folders`."""
    f = open(path, "wb")  # a file that cannot be opened is left as it is
    try:
        with f:  # its close flushes again, and fails again, on a full disk: caught here too
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
    except OSError as exc:
        Path(path).unlink(missing_ok=True)
        if exc.filename is None:  # a write to an open file names none: "No space left" of what?
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def nearest_existing(path: Path) -> Path:
    """`path`, or the nearest folder above it that exists (the root at worst): where a file or
    folder not made yet would go."""
    return next((place for place in (path, *path.parents) if place.exists()), Path(path.anchor or "/"))


def write_refusal(folder: Path) -> OSError | None:
    """The OSError a new file in `folder` meets (EROFS on a read-only filesystem, EACCES), None
    when one can be written. Tried, with a file written and gone: neither the mount's flags
    (ext4's emergency_ro still reads rw) nor permissions (root's reach) tell."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        return exc


def require_writable(folder: Path, target: str | Path) -> None:
    """OSError (exit code 7 in the CLI), naming `target`, unless a file can be made in `folder`,
    or, where it is not made yet, in the nearest folder above it: for a command that writes
    `target` after minutes or hours of work, found before that work."""
    existing = nearest_existing(folder)
    if (refused := write_refusal(existing)) is not None:  # a read-only disk too, which os.access misses
        where = "no file can be made in it" if existing == Path(target) else f"{existing} cannot be written"
        raise OSError(refused.errno, f"{where} ({refused.strerror})", str(target))


def sync_file(path: str | Path) -> None:
    """Wait until what was written to the file at `path` is on the disk (fsync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folders(folders: Iterable[str | Path]) -> None:
    """Sync each folder's entries to the disk: the names of files and folders made in it since.
    A folder that cannot be opened (gone, or a system without folder fsync) is left as it is."""
    for folder in folders:
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass  # some filesystems refuse fsync on a folder; their entries are theirs to keep
        finally:
            os.close(fd)


def replace_synced(path: str | Path, data: bytes) -> None:
    """Give `path` the content `data` whole or not at all: written beside it, synced, then renamed
    over it, and the rename synced. After a power cut the file holds the old content or the new,
    never a part or nothing (a model.json, an engine, the daemon's state). Two threads that
    replace one file take turns: both wrote one file beside it, and one renamed the other's
    while it was half written."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with _replacing(path):
        write_synced(tmp, data)
        rename_synced(tmp, path)


def rename_synced(written: Path, path: Path) -> None:
    """The file `written`, already on the disk (synced), takes the name `path`, replacing what
    was there, and the rename is synced: after a power cut `path` is the old file or the new."""
    written.replace(path)
    sync_folders([path.parent])


_locks_guard = threading.Lock()
_locks: dict[Path, threading.Lock] = {}


def _replacing(path: Path) -> threading.Lock:
    """The lock of the file at `path`, one per path in this process."""
    with _locks_guard:
        return _locks.setdefault(path.absolute(), threading.Lock())
