"""The line's record: every result the daemon publishes, kept in a database with its evidence,
and the people's reviews of it. One small API (`Record`) serves `vqad records`, `vqad review`
and the dashboard; `RecordWriter` fills it from the daemon, off the inference path."""

from edge.record.store import Record
from edge.record.writer import RecordWriter

__all__ = ["Record", "RecordWriter"]
