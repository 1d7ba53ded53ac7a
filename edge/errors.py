"""Domain exceptions. Raised deep, turned into one log line and an exit code in main()."""

from __future__ import annotations


class VqadError(Exception):
    """Base of every error the CLI reports as one line with an exit code."""

    exit_code = 1


class ConfigError(VqadError, ValueError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""

    exit_code = 2


class DataError(VqadError):
    """Training or evaluation data is missing or unreadable. The message names the file."""

    exit_code = 3


class RecordMissingError(DataError):
    """A SQLite record that is not there (yet): the daemon creates it at its first start."""


class ReviewedSinceError(DataError):
    """A review sent as made after the result's newest review its sender saw, when another was
    recorded since: `newer`, those reviews, oldest first."""

    def __init__(self, message: str, newer: list[dict]):
        super().__init__(message)
        self.newer = newer


class PackageError(VqadError):
    """A model package (model.json and its files) is missing, corrupt or inconsistent."""

    exit_code = 4


class BackendError(VqadError):
    """An inference backend cannot be created or failed to run."""

    exit_code = 5


class FrameError(VqadError):
    """One frame cannot be used. Carries the ids so the frame still gets a result."""

    def __init__(
        self, reason: str, camera_id: str | None = None, frame_id: int | None = None, part_id: str | None = None
    ):
        super().__init__(reason)
        self.reason = reason
        self.camera_id = camera_id
        self.frame_id = frame_id
        self.part_id = part_id


class CheckpointError(VqadError):
    """A checkpoint is missing, corrupt, or not a vqad checkpoint (nothing is unpickled)."""

    exit_code = 6


class HandshakeError(VqadError):
    """The daemon refused this client's connection (its CURVE keys, or their absence): ZeroMQ
    retries such a connection for ever without a word, so the client says why and stops."""

    exit_code = 1


class DaemonThreadError(VqadError):
    """A thread of the running daemon failed, or its backend failed every batch for a while; the
    daemon stopped so that its supervisor restarts it (a daemon that stays up without
    publishing, or publishing only errors, would be a silent stop)."""

    exit_code = 8
