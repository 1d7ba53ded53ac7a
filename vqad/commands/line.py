"""The line: `vqad serve`, `vqad dashboard`, `vqad camera`, `vqad watch`, `vqad records`, `vqad review`,
`vqad ctl`. None of these imports torch."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from edge.errors import ConfigError, DataError, HandshakeError
from edge.frames import named_few
from edge.spreadsheet import SpreadsheetCsv
from vqad import __version__
from vqad.commands.common import (
    at_least,
    default_config,
    identifier,
    mask_digits,
    overrides,
    picture_arg,
    pixel_bits_arg,
    set_arg,
    sha256_digits,
    stop_on_sigterm,
)

if TYPE_CHECKING:
    from edge.dashboard.settings import DashboardConfig
    from edge.offline import Scored
    from edge.package import ModelPackage
    from edge.record import Record
    from edge.record.days import ProductionDays
    from edge.settings import EdgeConfig

log = logging.getLogger("vqad")


def cmd_serve(args: argparse.Namespace) -> int:
    from edge.daemon import Daemon

    cfg = serve_config(args)
    if args.check:
        from edge.preflight import check_start

        for line in check_start(args.model, cfg):
            print(line)
        print(f"check passed: vqad {__version__} serve {args.model} would start with this config")
        return 0
    return Daemon(args.model, cfg, ready_file=args.ready_file).serve()


def serve_config(args: argparse.Namespace) -> EdgeConfig:
    """The daemon's config: the YAML, then --set, then the flags. ConfigError names what is wrong."""
    from edge.config import load_config
    from edge.settings import EdgeConfig

    over = overrides(args, "edge")
    for flag, key in (
        ("backend", "backend"),
        ("frames", "frames_endpoint"),
        ("results", "results_endpoint"),
        ("max_batch", "max_batch"),
        ("max_delay_ms", "max_delay_ms"),
        ("threshold", "threshold"),
        ("metrics_port", "metrics_port"),
        ("precision", "precision"),
        ("overload", "overload"),
        ("record", "record"),
        ("control", "control_endpoint"),
        ("evidence_dir", "evidence_dir"),
    ):
        value = getattr(args, flag)
        if value is not None:
            over[key] = value
    return load_config(EdgeConfig, args.config or default_config("edge"), over)


SCORE_COLUMNS = ("image", "status", "score", "threshold", "decision", "unfit", "regions", "region", "error")
AGAINST_COLUMNS = ("against_score", "against_threshold", "against_decision")


def cmd_score(args: argparse.Namespace) -> int:
    """`vqad score MODEL IMAGE_OR_FOLDER...`: the line's decision on image files, offline; with
    `--against OLD_MODEL`, beside the decisions of the package in service."""

    from edge.config import load_config
    from edge.offline import score_images
    from edge.package import load_package
    from edge.settings import EdgeConfig

    if args.against is not None:  # a mistyped folder said before the first package scores a thing
        _warn_of_other_masks(load_package(args.model), load_package(args.against))
    over = overrides(args, "edge")
    for flag in ("backend", "precision"):
        if getattr(args, flag) is not None:
            over[flag] = getattr(args, flag)
    config_file = args.config or default_config("edge")
    threshold = {} if args.threshold is None else {"threshold": args.threshold}
    scored = list(
        score_images(args.model, args.images, load_config(EdgeConfig, config_file, {**over, **threshold}), args.out)
    )
    against: list[Scored] = []
    if args.against is not None:  # the package in service, by its own threshold: --threshold is the new one's
        old_cfg = load_config(EdgeConfig, config_file, over)
        against = list(score_images(args.against, args.images, old_cfg, label="scoring --against"))
    rows = [_score_row(s, against[i] if against else None) for i, s in enumerate(scored)]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    elif args.format == "csv":
        columns = SCORE_COLUMNS + (AGAINST_COLUMNS if against else ())
        table = SpreadsheetCsv(sys.stdout, columns)
        for row in rows:
            table.row((row.get("against") or {}).get(c.removeprefix("against_")) if c in AGAINST_COLUMNS else row[c]
                      for c in columns)  # fmt: skip
    else:
        _print_score_table(rows, scored, against, args.against)
    if args.out:
        print(f"pictures: {args.out}", file=sys.stderr if args.format != "table" else sys.stdout)
    return _unscored_exit(rows)


def _warn_of_other_masks(new: ModelPackage, old: ModelPackage) -> None:
    """A warning when the two packages judge other parts of the frame (edge.inspection): a new
    export has no inspection mask, and the decisions that change would be the mask's too."""
    from edge.inspection import judged_words, mask_file

    if mask_file(new.meta) != mask_file(old.meta):
        log.warning(
            "%s judges %s, %s %s: decisions change by the inspection mask too (a new export has none: set the "
            "one in service with vqad calibrate %s GOOD_DIR --ignore X,Y,W,H ..., as vqad info %s says it)",
            new.root, judged_words(new.meta.get("inspection")), old.root, judged_words(old.meta.get("inspection")),
            new.root, old.root,
        )  # fmt: skip


def _score_row(scored: Scored, against: Scored | None) -> dict[str, Any]:
    """One image's row of `vqad score`: its verdict, the result header, and with `against`, the
    other package's score, threshold and decision."""
    from edge.protocol import unfit_reasons

    h = scored.header
    row = {"image": str(scored.path), "status": h["status"], "score": h.get("score"), "threshold": h.get("threshold"),
           "decision": h.get("decision"), "unfit": unfit_reasons(h), "regions": len(h.get("regions") or []),
           "region": _region(h), "error": h.get("error"), "result": h}  # fmt: skip
    if against is not None:
        a = against.header
        row["against"] = {k: a.get(k) for k in ("status", "score", "threshold", "decision", "error", "model")}
    return row


def _print_score_table(rows: list[dict], scored: list[Scored], against: list[Scored], against_dir: Path | None) -> None:
    """A line per image (a changed decision says what the other package decided), then each
    folder's passes and fails, and the decisions that change, when the images lie in several."""
    from edge.offline import by_folder, changes, summary

    for r in rows:
        verdict = (r["decision"] or r["status"]).upper()
        score = "-" if r["score"] is None else f"{r['score']:.5g}"
        why = f"  unfit: {r['unfit']}" if r["unfit"] else (f"  {r['error']}" if r["error"] else "")
        was = r.get("against") or {}
        if was.get("decision") and r["decision"] and was["decision"] != r["decision"]:
            why += f"  (was {was['decision'].upper()} {was['score']:.5g})"
        top = f" (top X,Y,W,H {r['region']})" if r["region"] else ""  # what `vqad calibrate --ignore` takes
        print(f"{verdict:5} {score:>9}  regions {r['regions']}{top}  {r['image']}{why}")
    old = dict(zip(map(id, scored), against, strict=True)) if against else {}
    folders = by_folder(scored)
    for folder, group in folders if len(folders) > 1 else ():
        changed = f"; {changes(group, [old[id(s)] for s in group])}" if against else ""
        print(f"{folder}: {summary(group)}{changed}")
    threshold = next((r["threshold"] for r in rows if r["threshold"] is not None), None)
    print(summary(scored) + ("" if threshold is None else f"; threshold {threshold:.6g}"))
    if against:
        was = next((r["against"]["threshold"] for r in rows if r["against"]["threshold"] is not None), None)
        at = "" if was is None else f" (threshold {was:.6g})"
        print(f"against {against_dir}{at}: {changes(scored, against)}")


def _unscored_exit(rows: list[dict]) -> int:
    """0, or 3 when an image could not be scored: a script that checks a package on known parts
    before it goes live must not read a folder with unreadable files as judged."""
    unscored = [r["image"] for r in rows if r["status"] == "error"]
    if not unscored:
        return 0
    log.error("%d of %d images not scored: %s", len(unscored), len(rows), named_few(unscored, 5))
    return 3


def cmd_camera(args: argparse.Namespace) -> int:

    from edge.camera import is_live, run_camera

    start_id = args.start_id
    if start_id is None:  # a live camera restarted would send its frame ids again from 0
        start_id = _start_id("time" if is_live(args.source) else "0")
        log.info("frame ids from %d (%s)", start_id, "time, a live source" if start_id else "0, a folder or file")
    stop = stop_on_sigterm()
    try:
        sent = run_camera(
            args.source,
            args.to,
            fps=args.fps,
            camera_id=args.camera_id,
            encoding=args.encoding,
            loop=args.loop,
            count=args.count,
            manifest=args.manifest,
            start_id=start_id,
            curve_secret=args.curve_secret,
            curve_server_key=args.curve_server_key,
            stop=stop,
            sndhwm=args.hwm,
            linger_s=args.linger_s,
            part_id_from_name=args.part_id_from_name,
            pixel_bits=args.pixel_bits,
        )
    except KeyboardInterrupt:
        return 130
    if sent.dropped:  # ZeroMQ does not say how many of them left: "sent N" would claim them all
        print(f"{sent.frames} frames handed over; the last of them (at most --hwm {args.hwm}) could not leave "
              f"and were dropped", file=sys.stderr)  # fmt: skip
        return 1
    print(f"sent {sent.frames} frames")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    import errno

    from edge.durable import require_writable
    from edge.watch import jsonl_to_stdout, run_watch

    folder = Path(args.summary_json).parent if args.summary_json else None
    if folder is not None:  # found at the start, not after hours of watching
        if not folder.is_dir():
            raise OSError(errno.ENOENT, f"{folder} is no folder", str(args.summary_json))
        require_writable(folder, args.summary_json)
    stop = stop_on_sigterm()
    summary = run_watch(
        args.endpoint or args.results,
        camera=args.camera,
        save_dir=args.save_dir,
        count=args.count,
        timeout_s=args.timeout,
        jsonl=args.jsonl,
        quiet=args.quiet,
        stop=stop,
        curve_secret=args.curve_secret,
        curve_server_key=args.curve_server_key,
    )
    print("summary: " + summary.text(), file=sys.stderr if jsonl_to_stdout(args.jsonl) else sys.stdout)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary.as_dict(), indent=2))
    if summary.refused:
        raise HandshakeError(summary.refused)
    return 0


CTL_TIMEOUT_S = 10.0
RELOAD_TIMEOUT_S = 60.0
# edge.control.COMMANDS, which takes a third of a second to import for every vqad command's parser
# (tests/test_control.py keeps the two equal).
CTL_COMMANDS = ("status", "set-threshold", "reload", "pause", "resume", "master")


class _CtlCommand(argparse.Action):
    """`vqad ctl`'s COMMAND, checked here instead of by choices=, so that a command given before
    the endpoint (`vqad ctl status tcp://…`) is told so rather than refused as an endpoint."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        value: str,
        option_string: str | None = None,
    ) -> None:
        if value not in CTL_COMMANDS:
            if namespace.endpoint in CTL_COMMANDS:
                parser.error(f"the endpoint comes first: vqad ctl {value} {namespace.endpoint}")
            parser.error(f"argument command: invalid choice: {value!r} (choose from {', '.join(CTL_COMMANDS)})")
        setattr(namespace, self.dest, value)


EVIDENCE_DIR_HELP = (
    "the record's evidence folder on this machine, where an image not at the path its row names is looked "
    "for: a backup's copy, a record moved to another disk (default: beside a SQLite file)"
)
RECORD_COLUMNS = ("camera_id", "frame_id", "ts_ns", "status", "decision", "score", "threshold", "model_sha256")


def cmd_records(args: argparse.Namespace) -> int:
    """Query the line's record; or export its reviewed evidence as training data."""
    from edge.record import Record
    from edge.record.store import refusals_named

    _check_record_flags(args)
    if args.compact or args.backup:
        return _whole_record(args)
    record = Record(args.url, must_exist=True, evidence_dir=args.evidence_dir or "", reading=True)
    with refusals_named(args.url):
        return _query_records(record, args)


def _check_record_flags(args: argparse.Namespace) -> None:
    """Raises ConfigError for flags `vqad records` cannot take together: --daily and the exports
    count or write a camera's results in a period, and take no flag that selects results to print."""
    if args.after_seq is not None and args.run is None:
        raise ConfigError("--after-seq counts within one start of the daemon: name it with --run")
    if not args.daily and args.day_starts is not None:
        raise ConfigError("--day-starts sets the days of --daily")
    if not args.daily and args.picture is not None:
        raise ConfigError("--picture draws the days of --daily")
    exporting = args.export_reviewed or args.export_sample
    if args.peers and not exporting:
        raise ConfigError(
            "--peers fetches the evidence that --export-reviewed writes, or --export-sample: give one of them"
        )
    if args.export_reviewed and args.export_sample:
        raise ConfigError("--export-reviewed and --export-sample: one at a time")
    if args.compact or args.backup:
        return  # _whole_record: no filter at all
    if args.daily and exporting:
        raise ConfigError("--daily prints the tally; --export-reviewed and --export-sample write images: one at a time")
    selecting = _selecting_flags(args)
    if selecting and (args.daily or exporting):
        what = "--daily tallies every result" if args.daily else (
            "--export-reviewed exports every reviewed result" if args.export_reviewed else
            "--export-sample exports a sample of the line's frames")  # fmt: skip
        one = len(selecting) == 1
        named = selecting[0] if one else f"{', '.join(selecting[:-1])} and {selecting[-1]}"
        raise ConfigError(
            f"{what}, or a camera's (--camera) captured in a time (--since, --until): {named} "
            f"{'selects' if one else 'select'} results to print, and {'does' if one else 'do'} not apply"
        )


def _selecting_flags(args: argparse.Namespace) -> list[str]:
    """The flags given that select which results `vqad records` prints."""
    given = {
        "--decision": args.decision, "--frame-id": args.frame_id is not None, "--part-id": args.part_id is not None,
        "--reviewed" if args.reviewed else "--unreviewed": args.reviewed is not None, "--model": args.model,
        "--mask": args.mask, "--master-parts": args.master_parts, "--run": args.run is not None,
    }  # fmt: skip
    return [flag for flag, on in given.items() if on]


def _whole_record(args: argparse.Namespace) -> int:
    """`vqad records --compact` or `--backup`: the SQLite file as a whole."""
    from edge.record.store import backup, compact, shown_url

    whole = "--compact rewrites" if args.compact else "--backup copies"
    if args.compact and args.backup:
        raise ConfigError("--compact and --backup: one at a time")
    filtered = args.camera or args.since or args.until or _selecting_flags(args)
    if filtered or args.daily or args.export_reviewed or args.export_sample:
        raise ConfigError(f"{whole} the whole record: it takes no filter, --daily nor an export")
    if args.compact:
        print(f"compacting {shown_url(args.url)}...", flush=True)
        before, after = compact(args.url)
        print(f"{before / 1e9:.3f} GB -> {after / 1e9:.3f} GB; rows that expire from now on give their space back "
              "to the disk")  # fmt: skip
        return 0
    print(f"backing up {shown_url(args.url)}...", flush=True)
    started = time.monotonic()
    path, count, size = backup(args.url, args.backup)
    shown = f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"
    print(f"{count} results, {shown} -> {path} in {time.monotonic() - started:.1f} s; the evidence "
          "files its rows name are not in it: copy their folder as it is (rsync -a)")  # fmt: skip
    return 0


def _peer_frames(args: argparse.Namespace):
    """With --peers: row -> the frame's bytes from the other boxes' dashboards (their token from
    $VQAD_PEERS_TOKEN), for the reviewed results whose evidence is on their disks; else None."""
    import os

    from edge.dashboard.peers import Peers, Picture
    from edge.dashboard.settings import check_peer

    if not args.peers:
        return None
    urls = tuple(url.strip() for url in args.peers.split(",") if url.strip())
    for url in urls:
        check_peer(url)
    peers = Peers(urls, os.environ.get("VQAD_PEERS_TOKEN", ""))

    def frame(row: dict) -> bytes | None:
        answer = peers.fetch(row, "frame")
        if isinstance(answer, Picture):
            return answer.content
        log.warning("%s frame %s (result %s): %s", row["camera_id"], row["frame_id"], row["id"], answer.describe())
        return None

    return frame


def _query_records(record: Record, args: argparse.Namespace) -> int:
    """What `vqad records` asks of the open record: its reviewed evidence exported, the daily
    tally, or the results printed as they are read."""
    zone = _line_days(args).zone  # the table's times, and --since/--until without an offset
    since_ns, until_ns = _time_window(args, zone)
    if args.export_reviewed:
        return _export_reviewed(record, args, since_ns, until_ns)
    if args.export_sample:
        return _export_sample(record, args, since_ns, until_ns)
    if args.daily:
        return _print_daily(record, args)
    from edge.record.store import WHOLE_FRAME

    rows = record.iter_results(
        args.limit,
        camera=args.camera,
        decision=args.decision,
        since_ns=since_ns,
        until_ns=until_ns,
        frame_id=args.frame_id,
        part_id=args.part_id,
        reviewed=args.reviewed,
        model_sha256=args.model,
        mask_sha256=WHOLE_FRAME if args.mask == "none" else args.mask,
        run=args.run,
        after_seq=args.after_seq,
        master=True if args.master_parts else None,
    )
    printed = {"json": _print_json, "csv": _print_csv}.get(args.format, _print_table)(rows, zone)
    if printed == args.limit:  # to stderr: a CSV or JSON export stays clean
        which = "first" if args.after_seq is not None else "newest"
        log.warning("the %s %d results are shown; there may be more (--limit N)", which, args.limit)
    if args.run is not None:
        _say_run_end(record, args.run)
    return 0


def _say_run_end(record: Record, run: str) -> None:
    """To stderr, as the dashboard's /api/results says in `run_published`: where the run's
    results end, so that a catch-up knows whether the record lacks its last ones."""
    published = record.run_published(run)
    if published is None:
        log.info("run %s has no stop row: it serves still, or it ended without one (killed, or the power lost)", run)
    else:
        last = f": seq 0 to {published - 1}" if published else ""
        log.info("run %s stopped after publishing %d result%s%s", run, published, "" if published == 1 else "s", last)


# `vqad records`' three formats. Each prints the results as they are read, a page at a time
# (Record.iter_results), and returns how many it printed.
def _print_json(rows: Iterable[dict], _zone: dt.tzinfo) -> int:
    n = 0
    for n, r in enumerate(rows, 1):
        print("[" if n == 1 else ",", json.dumps(r, default=str))
    print("]" if n else "[]")
    return n


def _print_csv(rows: Iterable[dict], zone: dt.tzinfo) -> int:
    """One row a result. `time` is `ts_ns` in the line's zone, for a spreadsheet; `overlay` is the
    heat map's file beside the frame's (`evidence`), and both are empty once the quota removed them.
    `run` and `seq` place it in its daemon's published stream (empty in rows of a vqad before them);
    `master` is a master part's known decision (empty for a product), `master_outcome` what its
    check came to (right, wrong or unproven); `region` the box of its highest region, X,Y,W,H;
    `mask_sha256` the inspection mask that judged it (empty for the whole frame); `recovered` when
    a start put the row back from its daemon run's journal (its run ended before committing it:
    the images it had not written whole are lost), empty for a row its run committed."""
    table = SpreadsheetCsv(sys.stdout, [*RECORD_COLUMNS, "evidence", "reviews", "part_id", "unfit", "result_id", "time",
                                        "overlay", "run", "seq", "master", "master_outcome", "region",
                                        "mask_sha256", "recovered"])  # fmt: skip
    n = 0
    for r in rows:
        n += 1
        reviews = ";".join(f"{v['verdict']}:{v['kind'] or ''}:{v['reviewer'] or ''}" for v in r["reviews"])
        row = [*(r[c] for c in RECORD_COLUMNS), r["evidence"] or "", reviews, r["part_id"] or "", r["unfit"] or ""]
        overlay = (r["evidence"] and r.get("evidence_overlay")) or ""
        seq = "" if r["seq"] is None else r["seq"]
        table.row([*row, r["id"], _local_time(r["ts_ns"], zone), overlay, r["daemon_run"] or "", seq,
                   r.get("master") or "", r.get("master_outcome") or "", _region(r) or "",
                   r.get("mask_sha256") or "", _local_time(r["recovered_ns"], zone) if r.get("recovered_ns") else "",
                   ])  # fmt: skip
    return n


def _part(r: dict) -> str:
    """A result's part for a person: its id, and for a master part whether it got its verdict."""
    if not r.get("master"):
        return r["part_id"] or "-"
    checked = r["master_outcome"]
    return f"{r['part_id']}(master:must-{r['master']},{checked if checked == 'right' else checked.upper()})"


def _region(r: dict) -> str | None:
    """A result's highest region as X,Y,W,H in the frame's pixels: what `vqad calibrate --ignore`
    takes, when the region is a date code or a label and no defect. None without one."""
    regions = [g for g in r.get("regions") or [] if isinstance(g, dict)]
    if not regions:
        return None
    top = max(regions, key=lambda g: g.get("peak") or 0)
    return ",".join(str(top.get(k, "?")) for k in ("x", "y", "w", "h"))


def _print_table(rows: Iterable[dict], zone: dt.tzinfo) -> int:
    from edge.record.store import model_mark

    n = 0
    for n, r in enumerate(rows, 1):
        if n == 1:
            print(f"{'time':<25} {'camera':>10} {'frame':>8} {'result':>8} {'status':>7} {'dec.':>5} {'score':>8} "
                  f"{'threshold':>9} {'region X,Y,W,H':>15} {'model':<12} reviews part unfit evidence")  # fmt: skip
        when = _local_time(r["ts_ns"], zone)
        # The score beside the threshold it was decided at: an audit reads how near the line it was.
        score, threshold = ("-" if r[k] is None else f"{r[k]:.4g}" for k in ("score", "threshold"))
        verdicts = ",".join(v["verdict"] for v in r["reviews"]) or "-"
        unfit = "unfit:" + r["unfit"] if r["unfit"] else "-"
        # A row put back after its run ended: why it may lack the images a fail keeps.
        put_back = "(put back from its run's journal)" if r.get("recovered_ns") else ""
        evidence = " ".join(filter(None, (r["evidence"], put_back)))
        print(f"{when} {r['camera_id']:>10} {r['frame_id']:>8} {r['id']:>8} {r['status']:>7} "
              f"{r['decision'] or '-':>5} {score:>8} {threshold:>9} {_region(r) or '-':>15} "
              f"{model_mark(r, none='')} {verdicts} "
              f"{_part(r)} {unfit} {evidence}")  # fmt: skip
    print(f"{n} results")
    return n


DAILY_COLUMNS = ("day", "camera_id", "model_sha256", "results", "pass", "fail", "fail_rate", "error", "dropped",
                 "false_reject", "defect", "unreviewed", "unfit", "missed", "master", "master_wrong",
                 "master_unproven", "products_decided", "products_failed", "mask_sha256")  # fmt: skip


def _time_window(args: argparse.Namespace, zone: dt.tzinfo) -> tuple[int | None, int | None]:
    """--since and --until in ns, read in `zone` when they carry no offset; --until as a date alone
    is that day's end, so that `--since D --until D` is the day D. ConfigError (exit 2)
    for a time that is not ISO 8601, or a window that ends before it starts: it holds nothing,
    and "0 results" would read as a line that decided nothing."""
    from edge.record.store import parse_time

    try:
        since, until = parse_time(args.since, zone), parse_time(_day_end(args.until), zone)
    except DataError as exc:
        raise ConfigError(f"--since/--until: {exc}") from exc
    if since is not None and until is not None and since > until:
        raise ConfigError(f"--since {args.since} is after --until {args.until}")
    return since, until


def _day_end(text: str | None) -> str | None:
    """`text`, or its day's last microsecond when it is a date alone (YYYY-MM-DD)."""
    try:
        day = dt.date.fromisoformat(text) if text and len(text) == 10 else None
    except ValueError:
        return text  # parse_time names it
    return f"{day.isoformat()}T23:59:59.999999" if day else text


def _draw_daily(rows: list[dict], days: ProductionDays, path: Path, to: TextIO) -> None:
    """The days' picture (edge.record.trend) written to `path`, whose folder is made."""
    from edge.frames import write_image
    from edge.record.trend import daily_picture

    span = f"{rows[0]['day']} to {rows[-1]['day']}" if rows else "no results"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, daily_picture(rows, f"products' fail rate per day ({days.describe()}), {span}"))
    print(f"picture: {path}", file=to)


def _print_daily(record: Record, args: argparse.Namespace) -> int:
    """`vqad records --daily`: what the line decided per day, camera and model, and the changes
    made to the daemon in the same period."""
    from edge.record.store import NOT_CHANGES

    days = _line_days(args)
    since, until = _time_window(args, days.zone)
    if args.picture is not None:
        from edge.durable import require_writable

        require_writable(args.picture.parent, args.picture)  # a file there, or a read-only folder: said first
    rows = record.daily(camera=args.camera, since_ns=since, until_ns=until, days=days)
    changes = record.events(limit=args.limit, since_ns=since, until_ns=until, kinds_left_out=NOT_CHANGES)
    removed = record.removed()
    if args.format == "json":
        from edge.changes import said_each

        said = said_each(changes)
        print(json.dumps({"days": rows, "changes": said, "removed": removed, **days.named()}, indent=2, default=str))
    elif args.format == "csv":
        table = SpreadsheetCsv(sys.stdout, DAILY_COLUMNS)
        for r in rows:
            table.row(r[c] for c in DAILY_COLUMNS)
    else:
        _print_daily_table(rows, changes, days)
    if args.picture is not None:
        _draw_daily(rows, days, args.picture, to=sys.stdout if args.format == "table" else sys.stderr)
    if removed and rows and days.day_of(removed["up_to_ns"]).isoformat() >= rows[0]["day"]:
        log.warning("results captured up to %s have left the record (%d to keep its disk's floor, %d past "
                    "record_keep_days; reviewed ones stay): the days up to it are counted in part",
                    _local_time(removed["up_to_ns"], days.zone), removed["for_space"],
                    removed["past_keep_days"])  # fmt: skip
    if len(changes) == args.limit:
        log.warning("the newest %d changes to the daemon are shown; there may be more (--limit N)", args.limit)
    return 0


def _print_daily_table(rows: list[dict], changes: list[dict], days: ProductionDays) -> None:
    """`vqad records --daily`'s table: a line a day, camera and model; the changes; the master
    parts run through; and what the table holds."""
    from edge.record.store import model_mark

    print(f"{'day':10} {'camera':>10} {'model':17} {'results':>8} {'pass':>8} {'fail':>6} {'fail %':>7} "
          f"{'error':>6} {'dropped':>7}  reviewed fails: {'false':>5} {'defect':>6} {'not yet':>7} "
          f"{'unfit':>6} {'missed':>6} {'master':>6} {'wrong':>5} {'unjudged':>8}")  # fmt: skip
    for r in rows:
        rate = "-" if r["fail_rate"] is None else f"{100 * r['fail_rate']:.2f}"
        model = model_mark(r)
        print(f"{r['day']:10} {r['camera_id']:>10} {model:17} {r['results']:>8} "
              f"{r['pass']:>8} {r['fail']:>6} {rate:>7} {r['error']:>6} {r['dropped']:>7}  "
              f"{'':16}{r['false_reject']:>5} {r['defect']:>6} {r['unreviewed']:>7} {r['unfit']:>6} "
              f"{r['missed']:>6} {r['master']:>6} {r['master_wrong']:>5} {r['master_unproven']:>8}")  # fmt: skip
    for e in changes:
        print(_change_line(e, days.zone))
    masters, wrong = sum(r["master"] for r in rows), sum(r["master_wrong"] for r in rows)
    if masters:
        unjudged = sum(r["master_unproven"] for r in rows)
        failed = sum(r["fails"]["master"] for r in rows)
        print(f"{masters} master part(s) run through, {wrong} decided wrongly, {unjudged} not judged by the "
              "model (a paused camera, an unfit frame) (vqad records --master-parts lists each); "
              f"{failed} of the fails are theirs, left out of the fail rate")  # fmt: skip
    print(_daily_summary(rows, days, len(changes)))


def _daily_summary(rows: list[dict], days: ProductionDays, n_changes: int) -> str:
    """The daily table's last line: its days and rows, the masks its `+mask` stands for (the
    first digits `vqad records --mask` takes), and the changes listed."""
    masks = list(dict.fromkeys(r["mask_sha256"] for r in rows if r["mask_sha256"]))
    through = f"inspection mask{'s' if len(masks) > 1 else ''} {', '.join(m[:12] for m in masks)}" if masks else (
        "an inspection mask")  # fmt: skip
    return (f"{len({r['day'] for r in rows})} day(s) ({days.describe()}), {len(rows)} row(s) of a day, camera and "
            f"model (+mask: judged through {through}); {n_changes} change(s) to the daemon")  # fmt: skip


def _change_line(event: dict, zone: dt.tzinfo) -> str:
    """A change made to the daemon, for a person: when, what (edge.changes, as the dashboard
    says it), by whom, on which box and model (the record keeps them whole: --format json)."""
    from edge.changes import NAMES_MODEL, change_words

    detail = event["detail"] or {}
    daemon, model = detail.get("daemon"), detail.get("model")
    where = f" on {daemon['host']}" if isinstance(daemon, dict) and daemon.get("host") else ""
    if isinstance(model, dict) and model.get("sha256") and event["kind"] not in NAMES_MODEL:
        where += f" (model {model.get('name')} {str(model['sha256'])[:12]})"
    said = change_words(event["kind"], detail)
    return f"{_local_time(event['ts_ns'], zone)} {event['kind']} by {event['by'] or '-'}{where}: {said}"


def _line_days(args: argparse.Namespace):
    """The line's days and time zone that --timezone and --day-starts name (edge.record.days)."""
    from edge.record.days import ProductionDays

    try:
        return ProductionDays.parse(args.timezone or "", args.day_starts or "00:00")
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _local_time(ts_ns: int, zone: dt.tzinfo) -> str:
    """'2026-12-02 07:15:03+01:00': an instant in the line's time zone, its offset shown."""
    import datetime as dt

    return dt.datetime.fromtimestamp(ts_ns // 10**9, zone).isoformat(sep=" ")  # whole seconds, never rounded up


def cmd_review(args: argparse.Namespace) -> int:
    from edge.record import Record
    from edge.record.store import refusals_named, review_words

    record = Record(args.url, must_exist=True)
    with refusals_named(args.url):
        row = record.review(args.camera_id, args.frame_id, args.verdict, args.kind, args.by, args.note, args.result_id)
    print(f"review recorded: {row['camera_id']} frame {row['frame_id']} (result {row['result_id']}): {row['verdict']}")
    (reviewed,) = record.results(result_id=row["result_id"], limit=1)
    earlier = [r for r in reviewed["reviews"] if r["id"] < row["id"]]
    if earlier and (earlier[-1]["verdict"], earlier[-1]["kind"]) != (row["verdict"], row["kind"]):
        log.warning("it was reviewed before: %s; this review, the latest, is the one the daily tally counts and "
                    "--export-reviewed learns", "; ".join(map(review_words, earlier)))  # fmt: skip
    return 0


def cmd_ctl(args: argparse.Namespace) -> int:
    """A command to a running daemon's control socket; prints its JSON reply."""
    import getpass

    from edge.control import request
    from edge.errors import VqadError

    payload = _ctl_payload(args)
    # A reload loads and warms up a model; every other command is answered at once, so a
    # daemon that is not there is named within seconds.
    timeout_s = args.timeout or (RELOAD_TIMEOUT_S if args.command == "reload" else CTL_TIMEOUT_S)
    keys = {"curve_secret": args.curve_secret, "curve_server_key": args.curve_server_key}
    by = args.by or getpass.getuser()
    try:
        reply = request(args.endpoint, args.command, payload, by=by, timeout_s=timeout_s, **keys)
    except VqadError:
        if args.command == "reload":
            _reload_still_loading(args.endpoint, by, timeout_s, keys)
        raise
    print(json.dumps(reply, indent=2))
    if not reply.get("ok"):
        raise VqadError(f"{args.command} refused: {reply.get('error')}")
    if args.command in ("pause", "resume"):
        _warn_pause_unchanged(args.command, args.camera, reply)
        if reply.get("master_dropped"):  # the pause took the master part named for the camera's next frame
            log.warning("master part %s, named for the next frame of camera %r, is dropped by the pause: name it "
                        "again after the resume", reply["master_dropped"], args.camera)  # fmt: skip
    elif args.command == "master" and reply.get("seen") is False:  # its next frame would never come
        log.warning("camera %r has sent no frame since the daemon started: is its id right?", args.camera)
    if reply.get("kept") is False:
        log.warning("the daemon could not keep this for its next start (its state folder cannot be written: its log "
                    "says why): a restart goes back to what it started with")  # fmt: skip
    if args.command == "status" and reply.get("reload_pending"):
        print(f"a reload would load {' and '.join(reply['reload_would_load'])} ({reply['model_dir']} -> "
              f"{reply['model_dir_now']}; the daemon serves {reply['serving_from']}): `vqad ctl {args.endpoint} "
              "reload` to switch", file=sys.stderr)  # fmt: skip
    elif args.command == "status" and reply.get("model_dir_error"):
        print(f"a reload now would find no package to load: {reply['model_dir_error']}", file=sys.stderr)
    return 0


def _ctl_payload(args: argparse.Namespace) -> dict:
    """What `vqad ctl` sends with its command (args.value and args.camera set); VqadError for a
    missing or extra argument."""
    from edge.errors import VqadError

    args.value, args.camera = None, None
    if args.command == "set-threshold":
        try:
            args.value = float(args.arg)
        except (TypeError, ValueError):
            raise VqadError(f"set-threshold needs a number, got {args.arg!r}") from None
        if not args.reason:
            raise VqadError("set-threshold needs VALUE and --reason TEXT")
        payload = {"value": args.value, "reason": args.reason, "force": args.force}
    elif args.command in ("pause", "resume", "master"):
        args.camera = args.arg
        if not args.camera:
            raise VqadError(f"{args.command} needs a CAMERA")
        payload = {"camera": args.camera}
        if args.command == "master":
            if not args.part_id:
                raise VqadError("master needs CAMERA and --part-id ID: the master part its next frame shows")
            payload["part_id"] = args.part_id
    elif args.arg is not None:
        # A daemon serves the one MODEL_DIR it was started with: a path here would be ignored.
        hint = ": it reloads the daemon's own MODEL_DIR as it is now" if args.command == "reload" else ""
        raise VqadError(f"{args.command} takes no argument, got {args.arg!r}{hint}")
    else:
        payload = {}
    return payload


def _reload_still_loading(endpoint: str, by: str, waited_s: float, keys: dict) -> None:
    """A reload not answered within its wait: VqadError saying so when the daemon answers that it
    is still loading (a slow disk, a large engine), rather than that it does not answer."""
    from edge.control import request
    from edge.errors import VqadError

    try:
        status = request(endpoint, "status", {}, by=by, timeout_s=CTL_TIMEOUT_S, **keys)
    except VqadError:
        return
    if status.get("reloading"):
        since, who = status["reloading"].get("since"), status["reloading"].get("by")
        raise VqadError(
            f"the reload (since {since}, by {who}) goes on past {waited_s:g} s: `vqad ctl {endpoint} "
            "status` says when it is done (reloading: null, and the model); --timeout S waits longer"
        )


def _warn_pause_unchanged(command: str, camera: str, reply: dict) -> None:
    """A warning when pause or resume did not do what was meant: the camera was already in
    that state, or has sent no frame since the daemon started (its id mistyped?)."""
    paused = ", ".join(reply.get("paused") or []) or "none"
    if reply.get("changed") is False:
        state = "paused already" if command == "pause" else "not paused"
        log.warning("camera %r was %s; paused now: %s", camera, state, paused)
    if reply.get("seen") is False:
        log.warning("camera %r has sent no frame since the daemon started: is its id right? paused now: %s",
                    camera, paused)  # fmt: skip


def cmd_dashboard(args: argparse.Namespace) -> int:
    from edge.dashboard.server import run_dashboard

    return run_dashboard(dashboard_config(args))


def dashboard_config(args: argparse.Namespace) -> DashboardConfig:
    """The dashboard's config: the YAML, then the flags; the token from $VQAD_DASHBOARD_TOKEN
    when no flag gives one. ConfigError names what is wrong."""
    import os

    from edge.config import load_config
    from edge.dashboard.settings import DashboardConfig

    keys = ("results", "record", "evidence_dir", "metrics", "host", "port", "token", "timezone", "day_starts",
            "root_path", "record_cameras", "peers")  # fmt: skip
    over = {key: getattr(args, key) for key in keys}
    over = {key: value for key, value in over.items() if value is not None}
    if "token" not in over and os.environ.get("VQAD_DASHBOARD_TOKEN"):
        over["token"] = os.environ["VQAD_DASHBOARD_TOKEN"]
    if os.environ.get("VQAD_PEERS_TOKEN"):
        over["peers_token"] = os.environ["VQAD_PEERS_TOKEN"]
    return load_config(DashboardConfig, args.config or default_config("dashboard"), over)


def add_commands(sub: argparse._SubParsersAction) -> None:
    _add_serve(sub)
    _add_score(sub)
    _add_dashboard(sub)
    _add_camera(sub)
    _add_watch(sub)
    _add_records(sub)
    _add_review(sub)
    _add_ctl(sub)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="run the inspection daemon (ZeroMQ frames in, results out)")
    s.add_argument("model", type=Path, metavar="MODEL_DIR", help="a model package (vqad export)")
    s.add_argument("--config", type=Path, help="edge config YAML (default configs/edge.yaml)")
    s.add_argument("--backend", help="onnxruntime | tensorrt (or module:Class)")
    s.add_argument("--precision", choices=["fp32", "fp16"], help="onnxruntime graph to run")
    s.add_argument("--frames", metavar="ENDPOINT", help="where to bind the PULL socket")
    s.add_argument("--results", metavar="ENDPOINT", help="where to bind the PUB socket")
    s.add_argument("--max-batch", type=int, help="frames run together at most (edge.max_batch)")
    s.add_argument("--max-delay-ms", type=float, help="how long a batch waits to fill (edge.max_delay_ms)")
    s.add_argument("--threshold", type=float, help="override model.json's threshold")
    s.add_argument(
        "--overload",
        choices=["backpressure", "drop_oldest"],
        help="a full queue stops reading frames, or drops its oldest with a result (edge.overload)",
    )
    s.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    s.add_argument("--ready-file", type=Path, help="write this file once warmed up and serving")
    s.add_argument("--record", metavar="URL", help="keep every result: sqlite:///PATH, postgresql://..., or a PATH")
    s.add_argument("--control", metavar="ENDPOINT", help="a socket for vqad ctl (e.g. tcp://127.0.0.1:5557)")
    s.add_argument("--evidence-dir", metavar="DIR", help="frames and overlays of fails (default: beside a SQLite file)")
    set_arg(s, "edge")
    s.add_argument("--check", action="store_true",
                   help="verify what a start needs (model, backend, keys, folders, record); bind nothing")  # fmt: skip
    s.set_defaults(func=cmd_serve)


def _add_score(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("score", help="what the line would decide on image files, offline (no daemon)")
    s.add_argument("model", type=Path, metavar="MODEL_DIR", help="a model package (vqad export)")
    s.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders searched recursively")
    s.add_argument(
        "--out", type=Path, metavar="DIR", help="draw each result: its map over the image at its own size, peak ringed"
    )
    s.add_argument("--format", choices=["table", "csv", "json"], default="table", help="how to print the results")
    s.add_argument("--config", type=Path, help="edge config YAML (default configs/edge.yaml): threshold, health limits")
    s.add_argument("--backend", help="onnxruntime | tensorrt (or module:Class)")
    s.add_argument("--precision", choices=["fp32", "fp16"], help="onnxruntime graph to run")
    s.add_argument("--threshold", type=float, help="override model.json's threshold")
    s.add_argument(
        "--against",
        type=Path,
        metavar="OLD_MODEL_DIR",
        help="also score by this package (the one in service, at its own threshold): the decisions that change",
    )
    set_arg(s, "edge")
    s.set_defaults(func=cmd_score)


def _add_dashboard(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("dashboard", help="serve a live view of the line in the browser (and its JSON API)")
    d.add_argument("--config", type=Path, help="dashboard config YAML (default configs/dashboard.yaml)")
    d.add_argument(
        "--results",
        metavar="ENDPOINTS",
        help="the daemon's results endpoint, or several daemons' comma-separated "
        "(a plant's lines on one page); '' = none: a record's view alone",
    )
    d.add_argument("--record", metavar="URL", help="the line's record: rejects' evidence, and reviews from the page")
    d.add_argument("--evidence-dir", metavar="DIR", help=EVIDENCE_DIR_HELP)
    d.add_argument(
        "--metrics",
        metavar="URLS",
        help="the daemon's Prometheus endpoint, e.g. http://127.0.0.1:9100/metrics; with several --results, "
        "one per daemon in the same order, comma-separated",
    )
    d.add_argument("--host", help="address to listen on (default 127.0.0.1; any other needs a token)")
    d.add_argument("--port", type=int, help="port to listen on (default 8080)")
    d.add_argument("--token", help="require this token (or set VQAD_DASHBOARD_TOKEN, which ps cannot show)")
    d.add_argument(
        "--root-path", metavar="PREFIX", help="the path a reverse proxy serves the page under, e.g. /line3, when it "
        "takes it off before passing the request on (default: none)",
    )  # fmt: skip
    d.add_argument(
        "--record-cameras", metavar="PATTERNS", help="the record's cameras shown while they send nothing: comma-"
        "separated patterns, e.g. 'line3-*' on a record that boxes share (default: every camera)",
    )  # fmt: skip
    d.add_argument(
        "--peers", metavar="URLS", help="the other boxes' dashboards on a record they share, comma-separated "
        "(http://line4-box:8080): a picture on one of their disks is asked of them (their token: $VQAD_PEERS_TOKEN)",
    )  # fmt: skip
    _add_day_flags(d)
    d.set_defaults(func=cmd_dashboard)


def _add_camera(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("camera", help="send frames from a folder, video file, or device to the daemon")
    c.add_argument("source", help="folder of images, image or video file, device index, or URL")
    c.add_argument(
        "--to", "--frames", required=True, metavar="ENDPOINT", help="the daemon's frames endpoint (vqad serve --frames)"
    )
    c.add_argument("--fps", type=at_least(0, float), default=0.0, help="frames per second (0 = as fast as accepted)")
    c.add_argument("--camera-id", type=identifier, default="cam0", help="the camera's id in each frame (default cam0)")
    c.add_argument(
        "--encoding", choices=["raw", "jpeg", "png"], default="raw",
        help="how each frame travels (default raw pixels); a JPEG or PNG file in its own encoding travels as it is",
    )  # fmt: skip
    c.add_argument("--loop", action="store_true", help="start the folder or file again at its end")
    c.add_argument("--count", type=at_least(0), default=0, help="stop after this many frames (0 = no limit)")
    c.add_argument(
        "--start-id",
        type=_start_id,
        help="first frame_id, or 'time': the microseconds since the epoch, so that a camera restarted under "
        "systemd never sends a frame id again (default: time for a device or stream URL, 0 for a folder or file)",
    )
    c.add_argument("--manifest", type=Path, help="write camera_id,frame_id,source CSV")
    c.add_argument(
        "--part-id-from-name",
        action="store_true",
        help="send each file's name, without its image suffix (RR-SCRATCH-1.png: RR-SCRATCH-1), as its frame's part_id",
    )
    c.add_argument(
        "--pixel-bits",
        type=pixel_bits_arg,
        default=16,
        metavar="N",
        help="the bits a 16-bit image file's counts fill, 8 to 16: 12 for a Mono12 camera's (default 16)",
    )
    c.add_argument("--curve-secret", help="this client's .key_secret (CURVE)")
    c.add_argument("--curve-server-key", help="the daemon's public .key (CURVE)")
    c.add_argument(
        "--hwm",
        type=at_least(1),
        default=4,
        help="frames that may wait in this process for the daemon (ZeroMQ SNDHWM; default 4)",
    )
    c.add_argument(
        "--linger-s",
        type=at_least(0, float),
        default=30.0,
        help="on exit, wait this long for queued frames to reach the daemon (default 30; at most 3 after SIGTERM)",
    )
    c.set_defaults(func=cmd_camera)


def _add_watch(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("watch", help="print results; save overlays of failed frames")
    where = w.add_mutually_exclusive_group(required=True)
    where.add_argument("endpoint", nargs="?", metavar="ENDPOINT", help="the daemon's results endpoint (--results)")
    where.add_argument("--results", metavar="ENDPOINT", help="the same, named as vqad serve and the dashboard name it")
    w.add_argument("--camera", type=identifier, metavar="ID", help="this camera's results only")
    w.add_argument("--save-dir", type=Path, metavar="DIR", help="save each failed frame's overlay here")
    w.add_argument("--count", type=at_least(0), default=0, help="exit after this many results")
    w.add_argument("--timeout", type=at_least(0, float), default=0.0, help="exit after this many idle seconds")
    w.add_argument(
        "--jsonl", type=Path, metavar="FILE",
        help="append every result header to this file, a JSON object a line; - writes them to stdout alone "
        "(a pipe into jq or a program: the line per result is left out, the summary goes to stderr)",
    )  # fmt: skip
    w.add_argument("--summary-json", type=Path, help="write the summary here on exit")
    w.add_argument("--quiet", action="store_true", help="no line per result")
    w.add_argument("--curve-secret", help="this client's .key_secret (CURVE)")
    w.add_argument("--curve-server-key", help="the daemon's public .key (CURVE)")
    w.set_defaults(func=cmd_watch)


def _export_reviewed(record: Record, args: argparse.Namespace, since_ns: int | None, until_ns: int | None) -> int:
    """`vqad records --export-reviewed DIR`: the reviewed evidence in the MVTec layout."""
    from edge.durable import require_writable

    out = args.export_reviewed
    require_writable(out, out)  # before the evidence is read, or fetched
    counts = record.export_reviewed(out, args.camera, since_ns, until_ns, _peer_frames(args))
    for folder, n in sorted(counts.items()):
        print(f"{n} image{'' if n == 1 else 's'} -> {out / folder}")
    if not counts:
        print("no reviewed evidence to export")
    return 0


def _count_of(n: int, one: str, many: str | None = None) -> str:
    """'1 pass', '2 passes'."""
    return f"{n} {one if n == 1 else many or one + 's'}"


def _export_sample(record: Record, args: argparse.Namespace, since_ns: int | None, until_ns: int | None) -> int:
    """`vqad records --export-sample DIR`: the line's frames for `vqad calibrate`, a folder a camera."""
    from edge.durable import require_writable

    out = args.export_sample
    require_writable(out, out)  # before the evidence is read, or fetched
    samples = record.export_sample(out, args.limit, args.camera, since_ns, until_ns, _peer_frames(args))
    for s in samples:
        if not s.passes_kept:
            print(f"{s.camera}: the line passed {s.passes_in_period} in the period and kept the frame of none")
            continue
        defects = f"; left out: {s.defects_left_out} reviewed as defects" if s.defects_left_out else ""
        if s.rejects_drawn < s.rejects_wanted:  # the quota removed them: the sample lacks the high scores
            defects += f"; {s.rejects_wanted - s.rejects_drawn} of the rejects wanted have lost their frames"
        drawn = f"{_count_of(s.written['pass'], 'pass', 'passes')} and {_count_of(s.written['fail'], 'reject')}"
        print(f"{s.camera}: {drawn} -> {s.folder} (the line passed {s.passes_in_period} and rejected "
              f"{s.rejects_in_period} in the period, and kept the frames of "
              f"{_count_of(s.passes_kept, 'pass', 'passes')}{defects})")  # fmt: skip
    drawn_from = [s for s in samples if s.passes_kept]
    if not drawn_from:
        print("no pass in the period has its frame kept (edge.record_pass_fraction keeps a share of them)")
        return 0
    folder = drawn_from[0].folder if len(drawn_from) == 1 else out / "CAMERA"  # a model is one camera's
    print("The model decided them and no person has seen them: look through them, move out every defect (a "
          f"reject's file name ends in _fail), then vqad calibrate MODEL {folder}")  # fmt: skip
    return 0


def _add_records(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("records", help="query the line's record (or export its reviewed evidence)")
    r.add_argument("url", metavar="URL", help="sqlite:///PATH, postgresql://... or a SQLite file's PATH")
    _add_record_filters(r.add_argument_group("which results"))
    r.add_argument("--format", choices=["table", "csv", "json"], default="table", help="how to print the results")
    r.add_argument(
        "--limit", type=at_least(1), default=100, metavar="N",
        help="the newest N results at most, the first N with --after-seq, or with --export-sample N passes a camera "
        "(default 100)",
    )  # fmt: skip
    _add_record_exports(r.add_argument_group("exports: images for training and calibration"))
    _add_record_upkeep(r.add_argument_group("upkeep of a SQLite record"))
    daily = r.add_argument_group("the daily tally, and the line's days and times")
    daily.add_argument(
        "--daily",
        action="store_true",
        help="per day (--timezone, --day-starts), camera and model (+mask: through an inspection mask): results, "
        "passes, fails, the fail rate, errors, "
        "drops, the reviewed fails (false rejects, defects, not yet reviewed); and the changes made to the daemon",
    )
    daily.add_argument("--picture", type=picture_arg, metavar="PNG",
                       help="with --daily: draw each camera's days (the fail rate, split by what reviews found; a "
                       "change of model marked) into this image")  # fmt: skip
    _add_day_flags(daily)
    r.set_defaults(func=cmd_records)


def _add_record_filters(r: argparse._ArgumentGroup) -> None:
    """The results a query, an export or the tally reads."""
    r.add_argument("--camera", type=identifier, metavar="ID", help="this camera's results only")
    r.add_argument("--decision", choices=["pass", "fail"], help="passes or fails only")
    r.add_argument(
        "--since",
        metavar="ISO8601",
        help="from this time (without an offset, in --timezone: this machine's by default), or as long ago as 7d, "
        "24h, 30m",
    )
    r.add_argument(
        "--until", metavar="ISO8601", help="up to this time, included (read as --since is); a date alone: to its end"
    )
    r.add_argument("--frame-id", type=at_least(0), metavar="N", help="the results with this frame_id")
    r.add_argument("--part-id", metavar="ID", help="the results of the part its frames named (their part_id)")
    r.add_argument(
        "--model", type=sha256_digits, metavar="SHA256",
        help="the results this model judged: its sha256, or its first digits as the table shows them (4 at least)",
    )  # fmt: skip
    r.add_argument(
        "--mask", type=mask_digits, metavar="SHA256",
        help="the results judged through this inspection mask (its sha256, or its first digits), or through none: "
        "none",
    )  # fmt: skip
    r.add_argument(
        "--master-parts", action="store_true",
        help="the master parts' results: each check of the inspection with parts of known verdict, right or wrong",
    )  # fmt: skip
    reviewed = r.add_mutually_exclusive_group()
    reviewed.add_argument("--reviewed", action="store_const", const=True, help="the results a person has reviewed")
    reviewed.add_argument(
        "--unreviewed", dest="reviewed", action="store_const", const=False,
        help="the results waiting for a review: nobody has reviewed them, and the camera health gate did not fail "
        "them (with --decision fail: what --daily counts as not reviewed)",
    )  # fmt: skip
    r.add_argument("--run", metavar="RUN", help="one start of the daemon's results (their header's `run`)")
    r.add_argument(
        "--after-seq", type=int, metavar="N",
        help="with --run: its results published after the one of seq N, oldest first (a subscriber's catch-up)",
    )  # fmt: skip


def _add_record_exports(r: argparse._ArgumentGroup) -> None:
    """Evidence written out as folders of images, from this box's disk or its peers'."""
    r.add_argument(
        "--export-reviewed",
        type=Path,
        metavar="DIR",
        help="write reviewed evidence in the MVTec layout (one camera's with --camera, captured in --since/--until)",
    )
    r.add_argument(
        "--export-sample",
        type=Path,
        metavar="DIR",
        help="the line's frames for vqad calibrate, into DIR/<camera>/: --limit passes whose frames were kept "
        "(edge.record_pass_fraction) and the rejects in the share the line rejected, spread over --since/--until; "
        "results reviewed as defects left out",
    )
    r.add_argument("--evidence-dir", metavar="DIR", help=EVIDENCE_DIR_HELP)
    r.add_argument(
        "--peers", metavar="URLS", help="with an export: the other boxes' dashboards (comma-separated, "
        "http://line4-box:8080), asked for the evidence on their disks, on a record that boxes share (their "
        "token: $VQAD_PEERS_TOKEN)",
    )  # fmt: skip


def _add_record_upkeep(r: argparse._ArgumentGroup) -> None:
    """A SQLite file's maintenance: its space back, its backup."""
    r.add_argument(
        "--compact",
        action="store_true",
        help="rewrite a SQLite record without the room removed rows left, so that expired rows give their space "
        "back to the disk from then on (with the daemon stopped; needs as much free space as the file)",
    )
    r.add_argument(
        "--backup",
        metavar="DEST",
        help="copy a SQLite record to DEST (a file, or a folder for a file named by the time) while daemons write "
        "to it: one consistent snapshot, checked, in one file (the evidence files apart: rsync -a)",
    )


def _add_day_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The line's days, as the daily tally counts them."""
    parser.add_argument(
        "--timezone",
        metavar="ZONE",
        help="days and times in this IANA time zone (default: this machine's, as date shows it)",
    )
    parser.add_argument(
        "--day-starts", metavar="HH:MM", help="a day starts at this local time, a whole quarter hour (default 00:00)"
    )


def _start_id(text: str) -> int:
    """`vqad camera --start-id`: an integer from 0, or "time" (now in microseconds since the epoch:
    frame ids that go on growing across restarts, at up to a million frames a second)."""
    import time

    return time.time_ns() // 1000 if text == "time" else at_least(0)(text)


def _add_review(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser("review", help="record a person's verdict on a recorded result")
    v.add_argument(
        "url", metavar="URL", help="the line's record: sqlite:///PATH, postgresql://... or a SQLite file's PATH"
    )
    v.add_argument("camera_id", metavar="CAMERA_ID", help="the result's camera (vqad records shows it)")
    v.add_argument("frame_id", type=int, metavar="FRAME_ID", help="the result's frame_id")
    v.add_argument(
        "--verdict",
        required=True,
        choices=["false_reject", "defect"],
        help="a good part the line rejected, or a real defect",
    )
    v.add_argument("--kind", help="the defect's kind (its folder when exported)")
    v.add_argument("--by", help="who reviewed")
    v.add_argument("--note", help="free text kept with the verdict")
    v.add_argument(
        "--result-id",
        type=int,
        help="the record's id of the result (vqad records shows it), when the camera "
        "sent FRAME_ID more than once (a sender restarted); default the newest",
    )
    v.set_defaults(func=cmd_review)


def _add_ctl(sub: argparse._SubParsersAction) -> None:
    from edge.threshold import RAISED_REFUSED

    c = sub.add_parser("ctl", help="control a running daemon: status, set-threshold, reload, pause, resume, master")
    c.add_argument("endpoint", metavar="ENDPOINT", help="the daemon's --control endpoint")
    c.add_argument(
        "command", action=_CtlCommand, metavar="{" + ",".join(CTL_COMMANDS) + "}", help="what to ask or change"
    )
    c.add_argument("arg", nargs="?", metavar="VALUE|CAMERA", help="the threshold, or the camera to pause or resume")
    c.add_argument("--reason", help="why the threshold changes (required by set-threshold)")
    c.add_argument(
        "--part-id", metavar="ID", help="master: the master part the camera's next frame shows (within 60 s)"
    )
    c.add_argument(
        "--force",
        action="store_true",
        help=f"set-threshold: to {RAISED_REFUSED:g} times the calibrated threshold or more (refused without)",
    )
    c.add_argument("--by", help="who makes the change (default: this user)")
    c.add_argument(
        "--timeout",
        type=at_least(0.1, float),
        help=f"seconds to wait for the answer (default {CTL_TIMEOUT_S:g}; a reload warms up: {RELOAD_TIMEOUT_S:g})",
    )
    c.add_argument("--curve-secret", help="this client's .key_secret (CURVE; its .key among the daemon's authorized)")
    c.add_argument("--curve-server-key", help="the daemon's public .key (CURVE)")
    c.set_defaults(func=cmd_ctl)
