"""`vqad serve --check`: what the daemon's start needs, verified before a restart puts the line
in its hands. The config, the model package and its graph's hash, a backend per inference
worker (built, warmed up and timed), the CURVE keys, the folders it writes, the record. A
failure is the start's own error, with the start's exit code.

The check binds no socket: the daemon it is to replace holds them. It says which endpoints are
taken now instead.
"""

from __future__ import annotations

import errno
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.clock import PACKAGE_MADE, RECORD_NEWEST, clock_against, iso, span
from edge.durable import nearest_existing, write_refusal
from edge.errors import DataError
from edge.fail_rate import WINDOW as FAIL_RATE_WINDOW
from edge.inspection import InspectionMask
from edge.metrics import DaemonMetrics
from edge.serving import load_serving
from edge.settings import EdgeConfig
from edge.state import Overrides, state_folder_holder
from edge.transport import ipc_in_use

if TYPE_CHECKING:
    import sqlalchemy as sa

# A passed frame's row in a SQLite record, with its share of the indexes: 282 bytes over 80,000
# rows (2026-12-03); 0.73 GB a day at LINE_FPS, a common area camera's rate on a line.
ROW_BYTES = 282
LINE_FPS = 30


def check_start(model_dir: Path, cfg: EdgeConfig) -> list[str]:
    """Everything a start of `vqad serve model_dir` with `cfg` needs but its sockets; -> the
    lines that say what was found. Raises what the start would (PackageError, BackendError,
    ConfigError, DataError)."""
    state_dir = cfg.state_folder(model_dir)
    lines = _serving_lines(model_dir, cfg, Overrides.load(state_dir))
    if cfg.curve.enabled:
        lines.append(_curve_line(cfg))
    # The daemon would serve without it, forgetting its crash marker and what vqad ctl changes.
    lines.append(_writable_line("state folder", state_dir, "edge.state_dir names another folder"))
    if holder := state_folder_holder(state_dir):
        lines.append(f"note: the state folder is held now by a running daemon ({holder}): the one this "
                     "start would replace? Another daemon beside it needs a state_dir of its own")  # fmt: skip
    if cfg.record:
        lines += _record_lines(cfg)
    lines += _endpoint_lines(cfg)
    return lines


def _serving_lines(model_dir: Path, cfg: EdgeConfig, overrides: Overrides) -> list[str]:
    t0 = time.perf_counter()
    serving = load_serving(model_dir, cfg, DaemonMetrics())  # verifies the hash, builds and warms up
    try:
        built_s = time.perf_counter() - t0
        pkg, scoring = serving.package, serving.scoring
        frames = np.zeros((cfg.max_batch, *pkg.input_shape), np.uint8)
        t0 = time.perf_counter()
        serving.backends[0].infer(frames)
        batch_ms = (time.perf_counter() - t0) * 1e3
        source = scoring.threshold_source or {}
        return [
            f"model {pkg.name} ({pkg.sha256[:12]}…) from {pkg.root}: input {pkg.image_size[0]}x{pkg.image_size[1]} "
            f"(HxW) x {pkg.channels}, its graph's sha256 verified; {_judged(serving.mask)}",
            *_threshold_lines(scoring.threshold, source, pkg.sha256, overrides),
            f"backend {cfg.backend} x {len(serving.backends)}: built and warmed up in {built_s:.1f} s; "
            f"a batch of {cfg.max_batch} takes {batch_ms:.1f} ms; frames decoded by {_decoders(cfg.decoders())}",
            "camera health gate " + ("on" if serving.health else "off")
            + ", drift alarm " + ("on" if serving.drift else "off")
            + ", fail-rate alarm " + _fail_rate_words(cfg),
            _masters_line(cfg),
            _clock_line(pkg.created_ns),
        ]  # fmt: skip
    finally:
        serving.close()


def _judged(mask: InspectionMask | None) -> str:
    """What of the frame the package judges (edge.inspection), its mask checked at the load."""
    if mask is None:
        return "the whole frame judged"
    return f"its inspection mask's sha256 verified: {mask.inspected_share:.1%} of the frame judged"


def _clock_line(created_ns: int | None) -> str:
    """This machine's clock against the package's export (edge.clock): a box whose clock reads
    before it files the line's results on the wrong days."""
    if (behind := clock_against(PACKAGE_MADE, created_ns)) is None:
        made = f", after the package's export ({iso(created_ns)})" if created_ns else ""
        return f"clock: {iso(time.time_ns())}{made}"
    return _behind_note(behind)


def _record_clock_lines(engine: sa.Engine) -> list[str]:
    """A note when this machine's clock reads before the record's newest result (edge.clock)."""
    from edge.record.schema import newest_result_ns

    with engine.connect() as conn:
        behind = clock_against(RECORD_NEWEST, newest_result_ns(conn))
    return [] if behind is None else [_behind_note(behind)]


def _read_as_the_start_does(engine: sa.Engine) -> None:
    """The writer's first query at the start (the newest row's id), so that a damaged table the
    start would meet shows in the check too (sa.exc.DatabaseError)."""
    import sqlalchemy as sa

    from edge.record.schema import results

    with engine.connect() as conn:
        conn.execute(sa.select(sa.func.max(results.c.id))).scalar_one()


def _behind_note(behind: dict) -> str:
    """The note for a clock that reads before a time it has passed (ClockWatch.status)."""
    return (f"note: this machine's clock reads {behind['reads']}, {span(behind['behind_s'])} before "
            f"{behind['behind']} ({behind['behind_at']}): the record would file results at its time. Set it "
            "(docs/deploy.md, \"The box's clock\")")  # fmt: skip


def _decoders(n: int) -> str:
    return "the receiver thread" if n == 1 else f"{n} threads side by side (edge.decode_workers)"


def _fail_rate_words(cfg: EdgeConfig) -> str:
    """The fail-rate alarm's limits, the line's and the cameras' own, in words."""
    own = [f"{camera} {'off' if limit == 0 else f'{limit:.0%}'}"
           for camera, limit in sorted(cfg.fail_rate_alarm_cameras.items())]  # fmt: skip
    line = (
        f"over {cfg.fail_rate_alarm:.0%} of a camera's last {FAIL_RATE_WINDOW} decisions"
        if cfg.fail_rate_alarm
        else "off"
    )
    return f"{line}; cameras of their own: {', '.join(own)}" if own else line


def _masters_line(cfg: EdgeConfig) -> str:
    """Which part ids name master parts (edge/master.py), and the verdict each must get."""
    named = [f"{', '.join(cfg.master_defective_parts)} must fail"] if cfg.master_defective_parts else []
    named += [f"{', '.join(cfg.master_good_parts)} must pass"] if cfg.master_good_parts else []
    return "master parts: " + (
        "; ".join(named) if named else "none named (edge.master_good_parts, edge.master_defective_parts)"
    )


def _threshold_lines(configured: float, source: dict, sha256: str, overrides: Overrides) -> list[str]:
    """The threshold the start serves on, with what `vqad ctl` changed that it puts back or
    drops (edge.state.Overrides), and the cameras it keeps paused."""
    kept, lines = overrides.threshold, [f"threshold {configured:.6g}, set by {source.get('by') or 'unknown'}"]
    if kept is not None:
        who, why, value = kept["source"].get("who"), kept["source"].get("reason"), kept["value"]
        if overrides.applies(sha256, configured):
            lines = [f"threshold {value:.6g}, set with vqad ctl by {who} ({why}), kept over {configured:.6g}"]
        else:
            lines.append(
                f"note: the threshold {value:.6g} set with vqad ctl by {who} ({why}) is dropped at the start: it "
                f"replaced {kept['replaces']:.6g} on another model or configuration"
            )
    if overrides.paused:
        lines.append(f"paused with vqad ctl, and kept paused: {', '.join(overrides.paused)}")
    return lines


def _curve_line(cfg: EdgeConfig) -> str:
    from edge.security import authorized_keys, load_keypair

    load_keypair(cfg.curve.server_secret_key)
    allowed = authorized_keys(cfg.curve.authorized_keys_dir)
    return f"CURVE: the server key reads, {len(allowed)} authorised client key(s)"


def _writable_line(what: str, folder: Path, remedy: str = "") -> str:
    """DataError unless `folder`, or the nearest folder above it that exists, can be written."""
    existing = nearest_existing(folder)
    if (exc := write_refusal(existing)) is not None:
        said = f"the {what} {folder} cannot be written ({existing}: {exc.strerror or exc})"
        raise DataError(said + (f": {remedy}" if remedy else "")) from exc
    return f"{what} {folder}: writable" + ("" if existing == folder else " (to be created)")


def _record_lines(cfg: EdgeConfig) -> list[str]:
    """The record as the start opens it (its schema brought up to date, its missing indexes
    built); a database server that does not answer is a note, as it does not stop the start."""
    import sqlalchemy as sa

    from edge.record.housekeeping import gives_space_back
    from edge.record.store import default_evidence_dir, is_sqlite, open_record, shown_url, sqlite_damage, sqlite_file_of
    from edge.record.writer import disk_is_full

    database = sqlite_file_of(cfg.record)
    if database and not database.exists():  # the start creates it; the check does not
        evidence = (
            Path(cfg.evidence_dir)
            if cfg.evidence_dir
            else default_evidence_dir(sa.create_engine(f"sqlite:///{database}"))
        )
        return [
            f"record {shown_url(cfg.record)}: created by the start",
            _writable_line("record's folder", database.parent),
            _writable_line("evidence folder", evidence),
            *_network_note(database),
            *_rows_note(database, cfg),
        ]
    try:
        engine = open_record(cfg.record)
    except DataError as exc:
        if is_sqlite(cfg.record) and sqlite_damage(exc):
            return [_damaged_note(cfg.record, exc)]
        if not is_sqlite(cfg.record):
            return [f"note: {exc}; the daemon would serve and record once it answers"]
        if not disk_is_full(cfg.record):
            raise
        return [f"note: {exc}, and its disk is full; the daemon would serve and record once there is room"]
    try:
        evidence = Path(cfg.evidence_dir) if cfg.evidence_dir else default_evidence_dir(engine)
        lines = [f"record {shown_url(cfg.record)}: opened"]
        if database:  # SQLite writes its WAL beside the file: a read-only disk opens, and refuses every row
            lines.append(_writable_line("record's folder", database.parent))
        lines.append(_writable_line("evidence folder", evidence))
        try:
            _read_as_the_start_does(engine)
            lines += _record_clock_lines(engine)
        except sa.exc.DatabaseError as exc:  # a damaged page that opening the record did not read
            if not (database and sqlite_damage(exc)):
                raise
            return [_damaged_note(cfg.record, exc)]
        if database and not gives_space_back(engine):
            lines.append(f"note: the record was made without incremental auto-vacuum: expired rows leave their "
                         f"space in the file, not to the disk (vqad records {database} --compact, with the daemon "
                         "stopped)")  # fmt: skip
        return lines + ([*_network_note(database), *_rows_note(database, cfg)] if database else [])
    finally:
        engine.dispose()


def _damaged_note(url: str, exc: BaseException) -> str:
    """What the start does with a damaged SQLite record: it does not stop the line."""
    from edge.record.store import shown_url, sqlite_damage

    return (f"note: the record {shown_url(url)} is damaged ({sqlite_damage(exc)}): the start sets it aside with its "
            "evidence and records on a new one (docs/deploy.md, \"A damaged record\")")  # fmt: skip


def _network_note(database: Path) -> list[str]:
    """A note when a SQLite record lies on a network filesystem, where it can be damaged."""
    from edge.record.housekeeping import network_filesystem_note

    note = network_filesystem_note(database)
    return [f"note: {note}"] if note else []


def _rows_note(database: Path, cfg: EdgeConfig) -> list[str]:
    """Without record_keep_days, how long a SQLite record's disk holds the rows of a line of
    LINE_FPS before its oldest results leave: an integrator's cue to set it."""
    from edge.record.housekeeping import free_bytes

    if cfg.record_keep_days:
        return []
    room = free_bytes(database.parent) - cfg.record_min_free_gb * 1e9
    if room <= 0:
        return ["note: record_keep_days is 0 and the record's disk is under record_min_free_gb: the oldest "
                "results leave the record as new ones come"]  # fmt: skip
    days = room / (ROW_BYTES * LINE_FPS * 86400)
    return [
        f"note: record_keep_days is 0: at {LINE_FPS} frames/s the rows take the {room / 1e9:.1f} GB its disk has "
        f"over record_min_free_gb in about {days:.0f} days, and then the oldest results leave the record"
    ]


def _endpoint_lines(cfg: EdgeConfig) -> list[str]:
    """Whether each endpoint the daemon binds is free now (a running daemon holds its own)."""
    bound = {"frames": cfg.frames_endpoint if cfg.frames_mode == "pull" else None, "results": cfg.results_endpoint,
             "control": cfg.control_endpoint or None,
             "metrics": f"tcp://{cfg.metrics_host}:{cfg.metrics_port}" if cfg.metrics_port else None}  # fmt: skip
    taken = [f"{what} {endpoint}" for what, endpoint in bound.items() if endpoint and endpoint_in_use(endpoint)]
    if not taken:
        return ["endpoints: free"]
    return [f"note: in use now (by the daemon this one would replace?): {', '.join(taken)}"]


def endpoint_in_use(endpoint: str) -> bool:
    """Whether a process listens on a tcp:// or ipc:// endpoint now (False for other forms)."""
    if endpoint.startswith("ipc://"):
        return ipc_in_use(endpoint)
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    if not port.isdigit():
        return False
    if host in ("*", ""):
        host = "0.0.0.0"
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host.strip("[]"), int(port)))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False
