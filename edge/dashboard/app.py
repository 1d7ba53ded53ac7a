"""The dashboard's ASGI app (Starlette): one JSON API that the page and other programs share.

    GET  /                                  the page (static files, no build step, no CDN)
    GET  /api/summary                       per camera counts and rates; the daemon's state
    GET  /api/rejects?camera=ID&limit=N     the latest fails, newest first, with image links
    GET  /api/events                        server-sent events: the summary, coalesced
    GET  /api/image/{camera}/{frame}/{kind} a result's picture: overlay (map, regions) or frame
    GET  /api/results?part_id=SN&camera=ID&frame_id=N&decision=D&since=T&until=T&limit=N
                     &reviewed=B&model=SHA&day=YYYY-MM-DD
                                            the record's results, newest first (an MES asking
                                            what became of a part; the page, a day's fails
                                            nobody has reviewed)
    GET  /api/daily?camera=ID&days=N        per day, camera and model: what the line decided and
                                            what the reviews found (the record's Record.daily,
                                            held for the pages: edge.dashboard.daily)
    POST /api/review                        a verdict on a recorded reject (the record's API)

With a token, every request needs it: `Authorization: Bearer TOKEN`, or the cookie a browser
gets by opening `/?token=TOKEN` once. No CORS headers are sent: only the page's own origin
may call the API from a browser.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
import functools
import json
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from edge.changes import said_each
from edge.dashboard.daily import DailyTally
from edge.dashboard.live import CAMERAS_SHOWN, LiveFrame, LiveView
from edge.dashboard.peers import NOT_HERE, PEER_HEADER, Peers, Picture
from edge.dashboard.probe import MetricsProbe
from edge.dashboard.record_link import RETRY_S as RECORD_RETRY_S
from edge.dashboard.record_link import RecordLink, RecordUnavailableError
from edge.dashboard.settings import DashboardConfig, is_loopback
from edge.errors import DataError, ReviewedSinceError
from edge.fail_rate import mostly_unfit
from edge.inspection import StreamMasks
from edge.master import master_words, outcome, outcome_of, proves
from edge.protocol import RECORD_BEHIND_S, heartbeat_overdue, is_frame_id, unfit_reasons
from edge.recent import RecentDict
from edge.record import Record
from edge.record.days import ProductionDays
from edge.record.store import NOT_CHANGES, WHOLE_FRAME, check_seq_cursor, check_sha_prefix, parse_time

T = TypeVar("T")
log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# The API described for other programs (OpenAPI 3.1), served as it is: tests/test_dashboard.py
# holds the live answers to it.
OPENAPI = Path(__file__).parent / "openapi.json"
COOKIE = "vqad_token"
# The page gets at most this many summaries a second, whatever the result rate: at 200
# results/s a browser redraws twice a second instead of 200 times.
UPDATE_EVERY_S = 0.5
MAX_REJECTS = 200
# /api/results answers at most this many rows: a page of an audit, not an export (vqad records).
MAX_RESULTS = 1000
# /api/daily reaches back at most a year: a tally over more scans more rows than a page should wait for.
MAX_DAILY_DAYS = 366
# The page's tally: a week, read every minute (static/dashboard.js). The cameras it shows from the
# record alone are that week's, read as often: the tally's counts are held for its pages anyway.
DAILY_DAYS_SHOWN = 7
RECORDED_CAMERAS_EVERY_S = 60.0
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def app_path(scope: Scope) -> str:
    """The request's path within the dashboard: without the prefix a reverse proxy serves it
    under (root_path, which uvicorn adds to the path; a server that does not, leaves it out)."""
    root, path = scope.get("root_path", ""), scope["path"]
    return path[len(root) :] or "/" if root and path.startswith(root) else path


class TokenGate:
    """Refuses every request without the token (401); `/?token=T` sets the cookie, then redirects."""

    def __init__(self, app: ASGIApp, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        if self.token and not self._authorised(request):
            return await self._refuse(request)(scope, receive, send)
        if self.token and "token" in request.query_params and app_path(scope) == "/":
            root = scope.get("root_path", "")
            response = RedirectResponse(root + "/", status_code=303)  # the token leaves the address bar
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path=root or "/")
            return await response(scope, receive, send)

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _authorised(self, request: Request) -> bool:
        bearer = request.headers.get("authorization", "")
        offered = [
            bearer[7:] if bearer.lower().startswith("bearer ") else "",
            request.cookies.get(COOKIE, ""),
            request.query_params.get("token", "") if app_path(request.scope) == "/" else "",
        ]
        return any(secrets.compare_digest(o.encode(), self.token.encode()) for o in offered if o)

    @staticmethod
    def _refuse(request: Request) -> Response:
        if app_path(request.scope).startswith("/api/"):
            return JSONResponse({"error": "a token is required"}, 401, headers={"www-authenticate": "Bearer"})
        return Response("A token is required: open /?token=TOKEN once.", 401, media_type="text/plain")


class Dashboard:
    """The handlers, over the live view, the daemons' probes and the record (any may be absent)."""

    def __init__(
        self,
        view: LiveView,
        probes: tuple[MetricsProbe, ...] | None,
        record: RecordLink | None,
        days: ProductionDays,
        record_cameras: tuple[str, ...] = ("*",),
        peers: Peers | None = None,
        streams: tuple[str, ...] = ("",),
    ) -> None:
        """probes: the daemons' metrics, one per stream in its order (or none);
        record_cameras: patterns of the record's cameras shown while they send nothing;
        peers: the other boxes' dashboards, asked for pictures that are on their disks;
        streams: the results endpoints followed, the `source` of the view's results and
        heartbeats (one daemon's, several lines', or none: the record alone)."""
        self.view, self.probes, self.record, self.record_cameras = view, tuple(probes or ()), record, record_cameras
        self.peers = peers or Peers(())
        self.streams = streams
        self._cached: tuple[float, str] = (0.0, "{}")
        self._latest_held: RecentDict[str, tuple[float, LiveFrame | None]] = RecentDict(CAMERAS_SHOWN)
        self.daily = DailyTally(days)
        self._recorded: list[str] = []  # the cameras of the record's week (_refresh_recorded_cameras)
        self._recorded_next = 0.0  # when they are read again (monotonic)
        self._recorded_task: asyncio.Task | None = None  # held: the loop keeps only a weak reference
        self._unheard_said: set[str] = set()  # the results endpoints whose silence was logged

    # -- summary and its stream -----------------------------------------------------------
    def summary_json(self) -> str:
        """Computed and serialised about once per tick, whatever the number of pages asking."""
        now = time.monotonic()
        if now - self._cached[0] >= 0.9 * UPDATE_EVERY_S:
            self._cached = (now, json.dumps(self._summary(), separators=(",", ":")))
        return self._cached[1]

    def _summary(self) -> dict[str, Any]:
        cameras = self.view.summary(self._recorded)
        if len(self.streams) > 1:
            daemon = self._daemons()
        else:
            daemon = self._daemon(self.streams[0] if self.streams else "", self.probes[0] if self.probes else None)
        beats = self._heartbeats()
        for camera, view in cameras.items():
            beat = beats.get(view["daemon"]) or _beat_naming(beats, camera)
            view["drift"] = daemon.get("drift", {}).get(camera)
            # A paused camera's frames get an error result, not a decision (`vqad ctl pause`).
            view["paused"] = camera in (beat.get("paused") or ())
            view["fail_rate_alarm"] = fail_rate_alarm(beat, camera)
            view["master_parts"] = master_parts(beat, camera)
        behind = daemon.get("record_behind_s")
        daemon.update(
            results_seen=self.view.results_seen,
            results_missed=self.view.gaps.missed,
            throughput_per_s=round(sum(v["throughput_per_s"] for v in cameras.values()), 2),
            record=bool(self.record),
            record_read_only=bool(self.record) and self.record.read_only,
            streamed=bool(self.streams),
            record_behind=behind is not None and behind >= RECORD_BEHIND_S,
        )
        return {"cameras": cameras, "daemon": daemon, "now_ns": time.time_ns()}

    def _heartbeats(self) -> dict[str, dict[str, Any]]:
        """Each followed daemon's last heartbeat, by its results endpoint (none before the first)."""
        beats = {source: self.view.last_heartbeat(source) for source in self.streams}
        return {source: beat[1] for source, beat in beats.items() if beat is not None}

    def _daemon(self, source: str, probe: MetricsProbe | None) -> dict[str, Any]:
        """One daemon's state: its metrics when it is probed, and what its heartbeat from `source`
        says (without metrics, whether it is up)."""
        daemon = probe.snapshot() if probe else {"up": None, "metrics": None}
        daemon.update(self._heartbeat(source, daemon["up"] is None))
        daemon["results_refused"] = self.view.refusal(source)
        if daemon["up"]:
            daemon["results_unheard"] = self._results_unheard(source, daemon)
        return daemon

    def _results_unheard(self, source: str, daemon: dict[str, Any]) -> dict[str, Any] | None:
        """{published, endpoint} when the daemon's metrics count results published since the
        page began to listen, and nothing (no result, no heartbeat) came from `source` for
        `silent_after_s`: the page follows another endpoint than the daemon publishes on, or
        with keys it refuses. The page showed "daemon ready" over cameras that sent nothing."""
        unheard = self.view.never_heard_s(source) if source else None
        published = daemon.get("published_since_start") or 0
        if unheard is None or unheard <= self.view.silent_after_s or published <= 0:
            return None
        if source not in self._unheard_said:
            self._unheard_said.add(source)
            log.warning(
                "the daemon at %s has published %d results since this dashboard started, and none came from %s:"
                " is that its results endpoint (vqad serve --results), and are the CURVE keys its own?",
                daemon["metrics"], published, source,
            )  # fmt: skip
        return {"published": published, "endpoint": source}

    def _daemons(self) -> dict[str, Any]:
        """The daemons of several results endpoints: each one's state (`daemons`, in the order
        configured), and together, whether all are up and ready, whether any has stalled, their
        queues, reloads and drift alarms, and their record's figures at the worst."""
        probes = self.probes or (None,) * len(self.streams)
        each = [{"endpoint": e, **self._daemon(e, p)} for e, p in zip(self.streams, probes, strict=True)]
        ups = [d["up"] for d in each]
        return {
            "daemons": each,
            "metrics": [d["metrics"] for d in each if d["metrics"]] or None,
            "up": None if None in ups else all(ups),
            "ready": all(d.get("ready") for d in each),
            "stalled": any(d.get("stalled") for d in each),
            "heartbeat_age_s": _at_most(max, each, "heartbeat_age_s"),
            "threshold": None,  # each camera's own, on its section
            "threshold_source": None,
            "inspection": None,
            "drift": {camera: v for d in each for camera, v in (d.get("drift") or {}).items()},
            **{key: _at_most(sum, each, key) for key in ("queue_depth", "reloads", "reload_failures")},
            "record_behind_s": _at_most(max, each, "record_behind_s"),
            "record_error": next((d["record_error"] for d in each if d.get("record_error")), None),
            "record_set_aside": next((d["record_set_aside"] for d in each if d.get("record_set_aside")), None),
            "clock": next(({"endpoint": d["endpoint"], **d["clock"]} for d in each if d.get("clock")), None),
            "record_pending": _at_most(sum, each, "record_pending"),
            "unrecorded": _at_most(sum, each, "unrecorded"),
        }

    def _heartbeat(self, source: str, stands_in: bool) -> dict[str, Any]:
        """What the heartbeat from `source` says: its age, where its threshold came from, and,
        without a metrics endpoint (`stands_in`), whether the daemon is up (a beat within
        HEARTBEAT_MISSED intervals; never a message for `silent_after_s` since the page's server
        began to listen is down too) and whether its inference has stalled."""
        beat = self.view.last_heartbeat(source)
        if beat is None:
            said: dict[str, Any] = {"heartbeat_age_s": None, "threshold_source": None, "inspection": None,
                                    "clock": None, "vqad_version": None, "model_dir": None,
                                    "model_sha256": None}  # fmt: skip
            unheard = self.view.never_heard_s(source) if self.streams else None
            if stands_in and unheard is not None and unheard > self.view.silent_after_s:
                # A box that has been off since the dashboard started is as down as one that fell silent.
                said.update(up=False, ready=False, never_heard_s=round(unheard, 1))
            return said
        age, header = beat
        record = header.get("record") or {}
        # The mask's sha256 and share; its picture (mask_png) hatches the page's, not each summary.
        inspection = {k: v for k, v in (header.get("inspection") or {}).items() if k != "mask_png"} or None
        said = {"heartbeat_age_s": round(age, 2), "threshold_source": header.get("threshold_source"),
                "inspection": inspection, "record_error": record.get("error"),
                "record_set_aside": record.get("set_aside"), "clock": header.get("clock"),
                "vqad_version": header.get("vqad_version"), "model_dir": header.get("model_dir"),
                # The package's folder and model, for the reject dialog's command (by the reject's model).
                "model_sha256": (header.get("model") or {}).get("sha256")}  # fmt: skip
        if stands_in:
            up = not heartbeat_overdue(age, header)
            said.update(up=up, ready=up, threshold=header.get("threshold"), stalled=bool(header.get("stalled")))
            if record:
                said.update(record_pending=record.get("pending"), record_behind_s=record.get("behind_s"),
                            unrecorded=record.get("unrecorded"))  # fmt: skip
        return said

    def _refresh_recorded_cameras(self) -> None:
        """Start reading which cameras the record's daily tally of the page's week has, at most
        every RECORDED_CAMERAS_EVERY_S, in a worker thread: the summaries meanwhile carry the
        cameras read before. A dashboard started while the line stands (a night, a weekend, a
        box restarted) showed "No results yet" over a record of rejects waiting for their
        review, until a camera sent a frame again."""
        now = time.monotonic()
        if self.record is None or now < self._recorded_next:
            return
        self._recorded_next = now + RECORDED_CAMERAS_EVERY_S  # one read at a time, whatever the pages
        self._recorded_task = asyncio.get_running_loop().create_task(self._read_recorded_cameras())

    async def _read_recorded_cameras(self) -> None:
        days = self.daily.days
        since = days.start_ns(days.today() - dt.timedelta(days=DAILY_DAYS_SHOWN - 1))
        try:
            rows = await run_in_threadpool(self._from_record, lambda record: self.daily.rows(record, None, since))
        except RecordUnavailableError:
            self._recorded_next = time.monotonic() + RECORD_RETRY_S
            return
        cameras = {row["camera_id"] for row in rows}
        self._recorded = sorted(c for c in cameras if any(fnmatch.fnmatchcase(c, p) for p in self.record_cameras))

    async def api_summary(self, request: Request) -> Response:
        self._refresh_recorded_cameras()
        return Response(self.summary_json(), media_type="application/json")

    async def api_events(self, request: Request) -> Response:
        async def stream():
            # A summary every tick also keeps proxies from closing an idle connection.
            while not await request.is_disconnected():
                self._refresh_recorded_cameras()
                yield f"event: summary\ndata: {self.summary_json()}\n\n"
                await asyncio.sleep(UPDATE_EVERY_S)

        headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    # -- rejects and their pictures -------------------------------------------------------
    def api_rejects(self, request: Request) -> Response:
        camera = request.query_params.get("camera") or None
        try:
            limit = max(1, min(MAX_REJECTS, int(request.query_params.get("limit", "24"))))
        except ValueError:
            return JSONResponse({"error": "limit must be an integer"}, 400)
        rows, record_error = [], None
        if self.record is not None:
            try:
                rows = self._from_record(lambda record: record.results(camera=camera, decision="fail", limit=limit))
            except RecordUnavailableError as exc:  # the stream's rejects still come, with the reason
                record_error = str(exc)
        root = request.scope.get("root_path", "")
        items = [_reject_item(row, True, root) for row in rows]
        published: dict[tuple[str, int], list[float]] = {}
        for row in rows:
            published.setdefault((row["camera_id"], row["frame_id"]), []).append((row["published_ns"] or 0) / 1e9)
        streamed = self.view.rejects(camera, limit)
        items += [_reject_item(f.header, False, root, unrecordable=self.view.never_recorded(f))
                  for f in streamed if not _recorded(f, published)]  # fmt: skip
        items = sorted(items, key=lambda r: (r["ts_ns"], r["frame_id"]), reverse=True)[:limit]
        return JSONResponse({"rejects": items, "record": self.record is not None, "record_error": record_error})

    def api_results(self, request: Request) -> Response:
        """The record's results matching every filter given, newest first (with `after_seq`, in
        the order they were published), with their reviews and links to their evidence: what the
        line decided of a part, a frame, a period; what a subscriber missed."""
        if self.record is None:
            return JSONResponse({"error": "no record: start the dashboard with --record URL"}, 409)
        params = request.query_params
        try:
            limit = int(params.get("limit", "100"))
            frame_id = _frame_id_or_none(params["frame_id"]) if params.get("frame_id") else None
            if params.get("frame_id") and frame_id is None:
                raise ValueError(f"frame_id {params['frame_id']!r:.30} is not 0..2^63-1")
            since, until = parse_time(params.get("since") or None), parse_time(params.get("until") or None)
            if params.get("day"):
                if since is not None or until is not None:
                    raise ValueError("a day is a period of its own: give it, or since and until")
                since, until = self.daily.days.period_ns(dt.date.fromisoformat(params["day"]))
            after_seq = int(params["after_seq"]) if params.get("after_seq") else None
            check_seq_cursor(params.get("run"), after_seq)
            # A daily row's results: through its mask, or through none ("none", its mask_sha256 null).
            # A sha256 as people copy it, in either case; the record holds lower case.
            model = params.get("model", "").lower() or None
            mask = {"none": WHOLE_FRAME, "": None}.get(params.get("mask", ""), params.get("mask", "").lower())
            check_sha_prefix(model, "model")
            check_sha_prefix(mask, "mask")
        except (ValueError, DataError) as exc:
            return JSONResponse({"error": f"frame_id, after_seq and limit are integers, since and until ISO 8601, "
                                          f"day YYYY-MM-DD, model and mask sha256 digits: {exc}"}, 400)  # fmt: skip
        decision = params.get("decision") or None
        reviewed = {"true": True, "false": False, None: None}.get(params.get("reviewed") or None, "?")
        if not 1 <= limit <= MAX_RESULTS or decision not in (None, "pass", "fail") or reviewed == "?":
            return JSONResponse(
                {"error": f"limit must be 1..{MAX_RESULTS}, decision pass or fail, reviewed true or false"}, 400
            )
        run = params.get("run") or None
        query = functools.partial(
            Record.results, camera=params.get("camera") or None, decision=decision, since_ns=since, until_ns=until,
            frame_id=frame_id, limit=limit, part_id=params.get("part_id") or None, reviewed=reviewed,
            model_sha256=model, run=run, after_seq=after_seq, mask_sha256=mask,
        )  # fmt: skip
        try:
            rows = self._from_record(query)
            # A stopped run's count, so that a subscriber catching up on a run it never heard knows its end.
            ended = {"run_published": self._from_record(lambda record: record.run_published(run))} if run else {}
        except RecordUnavailableError as exc:
            return JSONResponse({"error": str(exc)}, 503)
        root = request.scope.get("root_path", "")
        items = [_result_item(row, root) for row in rows]
        return JSONResponse({"results": items, "limit_reached": len(rows) == limit, **ended})

    def api_daily(self, request: Request) -> Response:
        """The record's daily tally over the line's last `days` days (today included; the
        dashboard's timezone and day_starts), the changes made to the daemon in them, and what
        has left the record (`removed`, with `up_to_day`: the days up to it are counted in part)."""
        if self.record is None:
            return JSONResponse({"error": "no record: start the dashboard with --record URL"}, 409)
        try:
            days = int(request.query_params.get("days", "7"))
        except ValueError:
            return JSONResponse({"error": "days must be an integer"}, 400)
        if not 1 <= days <= MAX_DAILY_DAYS:
            return JSONResponse({"error": f"days must be 1..{MAX_DAILY_DAYS}"}, 400)
        camera = request.query_params.get("camera") or None
        line_days = self.daily.days
        since = line_days.start_ns(line_days.today() - dt.timedelta(days=days - 1))
        try:
            rows = self._from_record(lambda record: self.daily.rows(record, camera, since))
            changes = self._from_record(lambda record: record.events(since_ns=since, kinds_left_out=NOT_CHANGES))
            removed = self._from_record(lambda record: record.removed())
        except RecordUnavailableError as exc:
            return JSONResponse({"error": str(exc)}, 503)
        if removed:
            removed["up_to_day"] = line_days.day_of(removed["up_to_ns"]).isoformat()
        return JSONResponse({"days": rows, "changes": said_each(changes), "removed": removed, **line_days.named()})

    def api_image(self, request: Request) -> Response:
        camera, kind, frame_ref = (request.path_params[k] for k in ("camera", "kind", "frame"))
        frame_id = _frame_id_or_none(frame_ref)
        missing = JSONResponse({"error": "no such image"}, 404)
        if kind not in ("overlay", "frame") or (frame_id is None and frame_ref != "latest"):
            return missing
        if frame_id is None:  # the latest: it changes, so it is not cached
            live = self._latest(camera)
            return _live_image(live, kind, self.view.masks) if live is not None else missing
        # The record's evidence first: the frame as received, at full size. The stream's
        # picture (model size) while the writer has not stored it yet, or without a record.
        result_id = _frame_id_or_none(request.query_params.get("result", ""))  # a recorded result's own
        from_peer = PEER_HEADER in request.headers  # another box's dashboard: this disk's alone
        try:
            evidence = self._evidence(camera, frame_id, kind, result_id, from_peer) if self.record is not None else None
        except RecordUnavailableError:
            evidence = None
        if evidence is not None and evidence.status_code != 404:
            return evidence
        live = self.view.find(camera, frame_id, _frame_id_or_none(request.query_params.get("t", "")))
        if live is None:
            return evidence or missing
        response = _live_image(live, kind, self.view.masks)
        response.headers["cache-control"] = "private, max-age=86400, immutable"  # a result's picture never changes
        return response

    def _latest(self, camera: str) -> LiveFrame | None:
        """The camera's latest result, the same one for every page asking within a tick: at line
        rates each would otherwise get a new frame, and its picture drawn for it alone."""
        now = time.monotonic()
        held = self._latest_held.get(camera)
        if held is None or now - held[0] >= UPDATE_EVERY_S:
            held = self._latest_held[camera] = (now, self.view.find(camera, "latest"))
        return held[1]

    def _evidence(
        self, camera: str, frame_id: int, kind: str, result_id: int | None, from_peer: bool = False
    ) -> Response | None:
        """The evidence of the newest result of `camera` and `frame_id`, or of the result
        `result_id` (a sender that started its ids again recorded more than one); 410 when the
        quota removed it; when the file is not on this machine, the peer's that has it, else 404
        naming the file (and each peer's answer); None without it. A peer's request
        (`from_peer`) is answered from this disk alone."""
        query = functools.partial(Record.results, camera=camera, frame_id=frame_id, result_id=result_id, limit=1)
        rows = self._from_record(query)
        if not rows:
            return None
        path = rows[0]["evidence_overlay" if kind == "overlay" else "evidence_frame"]
        if rows[0]["evidence_removed"]:
            return JSONResponse({"error": "the evidence was removed by the disk quota"}, 410)
        if not path:  # a pass not sampled, or a result whose images were never written
            return JSONResponse({"error": NO_PICTURE_PUT_BACK if rows[0].get("recovered_ns") else NO_PICTURE_KEPT}, 404)
        if Path(path).is_file():
            return FileResponse(path, headers={"cache-control": "private, max-age=86400"})
        # A record shared by boxes: each keeps its images on its own disk.
        not_here = f"{NOT_HERE}: {path}"
        if from_peer or not self.peers:
            return JSONResponse({"error": not_here}, 404)
        answer = self.peers.fetch(rows[0], kind)
        if isinstance(answer, Picture):
            return Response(answer.content, media_type=answer.media_type,
                            headers={"cache-control": "private, max-age=86400"})  # fmt: skip
        if answer.removed:
            return JSONResponse({"error": answer.removed}, 410)
        return JSONResponse({"error": f"{not_here}, nor on its peers' ({answer.describe()})"}, 404)

    # -- review ---------------------------------------------------------------------------
    async def api_review(self, request: Request) -> Response:
        if self.record is None:
            return JSONResponse({"error": "no record: start the dashboard with --record URL"}, 409)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "send application/json"}, 415)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, 400)
        if not isinstance(body, dict) or not {"camera_id", "frame_id", "verdict"} <= set(body):
            return JSONResponse({"error": "a review is a JSON object with camera_id, frame_id and verdict"}, 400)
        ids = ("frame_id", "result_id", "after_review_id")
        frame_id, result_id, after_review_id = (_integer_or_as_sent(body.get(key)) for key in ids)
        review = functools.partial(
            Record.review, camera_id=body["camera_id"], frame_id=frame_id, verdict=body["verdict"],
            kind=body.get("kind") or None, by=body.get("by") or None, note=body.get("note") or None,
            result_id=result_id, after_review_id=after_review_id,
        )  # fmt: skip
        try:
            row = await run_in_threadpool(self._from_record, review)  # the database, off the event loop
            self.daily.forget_answers()  # the page's tally counts the review at its next read
        except ReviewedSinceError as exc:  # another person's verdict came first: shown, not overwritten unseen
            return JSONResponse({"error": str(exc), "reviews": exc.newer}, 412)
        except DataError as exc:
            return JSONResponse({"error": str(exc)}, 404 if "no recorded" in str(exc) else 400)
        except RecordUnavailableError as exc:
            return JSONResponse({"error": str(exc)}, 503)
        return JSONResponse({"review": row}, 201)

    def _from_record(self, query: Callable[[Record], T]) -> T:
        """query(the open record); RecordUnavailableError when its server does not answer."""
        try:
            return query(self.record.get())
        except sa.exc.SQLAlchemyError as exc:
            raise self.record.failed(exc) from exc


# A streamed reject and a recorded row of the same camera and frame id are one result when the
# dashboard read it within this long of its publication: a sender that started its ids again
# sent the other one at least a restart apart.
SAME_RESULT_S = 5.0


def _recorded(frame: LiveFrame, published: dict[tuple[str, int], list[float]]) -> bool:
    """Whether the streamed reject `frame` is a recorded one (the record's row is shown instead):
    `published` holds when each recorded result of a camera and frame id was published."""
    times = published.get((frame.header["camera_id"], frame.header["frame_id"]), [])
    return any(abs(t - frame.seen_s) < SAME_RESULT_S for t in times)


def _integer_or_as_sent(value: Any) -> Any:
    """An id a program may send as text ("17"), as an integer; anything else as it came, for
    Record.review to refuse."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


def _frame_id_or_none(text: str) -> int | None:
    """A frame id from a URL (0 <= id < 2^63), else None."""
    try:
        frame_id = int(text)
    except ValueError:
        return None
    return frame_id if is_frame_id(frame_id) else None


def _live_image(live: LiveFrame, kind: str, masks: StreamMasks) -> Response:
    if kind == "frame":
        if not live.frame_jpeg:
            return JSONResponse({"error": "the stream carries no frames (edge publish_frames)"}, 404)
        return Response(live.frame_jpeg, media_type="image/jpeg")
    picture = live.picture_jpeg(masks)
    if picture is None:
        return JSONResponse({"error": "the stream carries no maps (edge publish_maps)"}, 404)
    return Response(picture, media_type="image/jpeg")


# Why a recorded result has no picture, where the stream's is gone too: a pass not sampled, a
# full disk, or a row put back from the daemon's journal after a kill (edge.record.journal).
NO_PICTURE_KEPT = "no picture kept: its images were not written (a full disk, or the daemon ended first)"
# ... and where its row says it was put back (results.recovered_ns): the run's end is why.
# Short: a gallery's tile shows it. A run that ended first: killed, its power lost, or stopped
# while the record did not answer (edge.record.journal).
NO_PICTURE_PUT_BACK = "no picture kept: its row came back from the journal of a run that ended first"


def _reject_item(
    src: dict[str, Any], recorded: bool, root: str = "", unrecordable: str | None = None
) -> dict[str, Any]:
    """A reject as the API gives it, from a streamed header or a record row; its image links
    under `root`, the prefix a reverse proxy serves the dashboard under. `unrecordable`: why a
    streamed one will never be in the record (LiveView.never_recorded)."""
    camera, frame_id = str(src["camera_id"]), int(src["frame_id"])
    result_id = src.get("id") if recorded else None
    base = f"{root}/api/image/{quote(camera, safe='')}/{frame_id}"
    # A recorded result's pictures by its own id; a streamed one's told apart by its time, for
    # the browser's cache: a sender that starts its ids again sends this frame id anew.
    query = f"?result={result_id}" if result_id is not None else f"?t={int(src.get('ts_ns') or 0)}"
    keys = ("camera_id", "frame_id", "part_id", "ts_ns", "score", "threshold", "decision", "regions", "frame_shape")
    item = {k: src.get(k) for k in keys}
    has_frame = bool(src.get("evidence")) if recorded else bool(src.get("frame"))
    # A streamed result's picture is its map, its frame, or both (`publish_maps: false` still
    # shows the part); a recorded one's is its overlay, or the stream's while the record has none
    # (its evidence not written: a full disk). A recorded frame without an overlay (a result
    # without a map) links the frame alone, not an overlay that is not there.
    has_picture = (bool(src.get("evidence_overlay")) or not has_frame) if recorded else (
        bool(src.get("map")) or has_frame)  # fmt: skip
    item.update(
        # The camera health gate's reasons: a fail it caused is the camera's, whatever the score.
        unfit=src.get("unfit") if recorded else unfit_reasons(src),
        # A master part's known decision (edge/master.py): run to prove the inspection, not a product.
        master=src.get("master") if recorded else (src.get("master") or {}).get("expected"),
        model=src.get("model"),
        recorded=recorded,
        unrecordable=unrecordable,
        reviews=src.get("reviews", []) if recorded else [],
        result_id=result_id,
        # When a start put it back from its daemon run's journal (the run ended before committing it).
        recovered_ns=src.get("recovered_ns") if recorded else None,
        images={
            "overlay": f"{base}/overlay{query}" if has_picture else None,
            "frame": f"{base}/frame{query}" if has_frame else None,
        },
    )
    # What its check of the inspection came to, for a program that reads a master part's result
    # as the stream's subscribers and the page read it (edge.master.outcome).
    item["master_outcome"] = outcome(item["decision"], item["master"], item["unfit"]) if item["master"] else None
    return item


def _result_item(row: dict[str, Any], root: str = "") -> dict[str, Any]:
    """A recorded result as /api/results gives it: the reject's fields, what else the record
    kept, and links to the evidence it still has (none for a pass without a sampled frame)."""
    item = _reject_item(row, True, root)
    item.update({k: row.get(k) for k in ("status", "error", "latency_ms", "published_ns", "seq")})
    item["run"] = row.get("daemon_run")
    kept = not row["evidence_removed"]
    item["images"] = {
        "overlay": item["images"]["overlay"] if kept and row.get("evidence_overlay") else None,
        "frame": item["images"]["frame"] if kept and row.get("evidence_frame") else None,
    }
    return item


def _at_most(reduce: Callable, daemons: list[dict[str, Any]], key: str) -> Any:
    """`reduce` (max, sum) of the daemons' `key` where they have one; None where none has."""
    values = [d[key] for d in daemons if d.get(key) is not None]
    return reduce(values) if values else None


@functools.cache
def _openapi_document() -> dict[str, Any]:
    return json.loads(OPENAPI.read_text())


def api_openapi(request: Request) -> Response:
    """The API's OpenAPI description (edge/dashboard/openapi.json, read once); behind a reverse
    proxy's prefix (--root-path), its server is that prefix, which the paths follow."""
    root = request.scope.get("root_path", "")
    return JSONResponse({**_openapi_document(), "servers": [{"url": root}]} if root else _openapi_document())


def create_app(
    cfg: DashboardConfig, view: LiveView, probes: tuple[MetricsProbe, ...], record: RecordLink | None
) -> Starlette:
    peers = Peers(cfg.peers, cfg.peers_token or cfg.token)  # a plant's dashboards share one, often
    d = Dashboard(view, probes, record, cfg.production_days(), cfg.record_cameras, peers, cfg.results)
    routes = [
        Route("/api/summary", d.api_summary),
        Route("/api/rejects", d.api_rejects),
        Route("/api/results", d.api_results),
        Route("/api/daily", d.api_daily),
        Route("/api/events", d.api_events),
        Route("/api/image/{camera}/{frame}/{kind}", d.api_image),
        Route("/api/review", d.api_review, methods=["POST"]),
        Route("/api/openapi.json", api_openapi),
        Mount("/", StaticFiles(directory=STATIC, html=True)),
    ]
    middleware = [Middleware(TokenGate, token=cfg.token)]
    if not cfg.token and is_loopback(cfg.host):
        # Without a token, only this machine's names: a web page elsewhere cannot reach the API
        # through a DNS name rebound to 127.0.0.1.
        hosts = ["127.0.0.1", "localhost", "[::1]", "::1"]
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=hosts))
    return Starlette(routes=routes, middleware=middleware)


def fail_rate_alarm(beat: dict[str, Any], camera: str) -> dict[str, Any] | None:
    """{fails, of, unfit, window, limit, since_ns, mostly_unfit} while the heartbeat names `camera`'s fail-rate alarm
    (edge/fail_rate.py), else None."""
    fail_rate = beat.get("fail_rate") or {}
    alarm = (fail_rate.get("alarms") or {}).get(camera)
    if not isinstance(alarm, dict):
        return None
    # the camera's own limit; and whether the camera, not the process, is to be seen to first
    return {"window": fail_rate.get("window"), "limit": fail_rate.get("limit"), **alarm,
            "mostly_unfit": mostly_unfit(alarm)}  # fmt: skip


def _beat_naming(beats: dict[str, dict[str, Any]], camera: str) -> dict[str, Any]:
    """For a camera none of whose results the page has seen (known from the record: a line at
    rest, a dashboard started since), the heartbeat that names it: paused, its fail-rate alarm,
    its master parts. A wrong master part stands until checked right, idle line or not."""
    for beat in beats.values():
        named = (
            beat.get("paused") or (),
            (beat.get("fail_rate") or {}).get("alarms") or {},
            beat.get("master_parts") or {},
        )
        if any(camera in said for said in named):
            return beat
    return {}


def master_parts(beat: dict[str, Any], camera: str) -> list[dict[str, Any]] | None:
    """`camera`'s master parts, each one's latest check, by part_id, while the heartbeat names
    any (edge/master.py), else None; each with `proves_now`: whether it was made on the model
    and threshold the daemon serves now (a check proves the inspection it was made on; one kept
    by a vqad that did not name them is taken as made on it), its `outcome` (right, wrong,
    unproven), which a daemon that did not name it leaves to be worked out here, and `said`."""
    parts = (beat.get("master_parts") or {}).get(camera)
    if not isinstance(parts, dict) or not parts:
        return None
    model = beat.get("model") or {}
    serving = (model.get("sha256"), beat.get("threshold"), model.get("mask_sha256"))
    checks = (parts[part] for part in sorted(parts))
    return [{**_in_words(check), "proves_now": proves(check, *serving)} for check in checks]


def _in_words(check: dict[str, Any]) -> dict[str, Any]:
    """A master part's check with its `outcome` and `said` (the log's words, edge.master), and
    so its `unjudged` run, where it has one."""
    words = {"outcome": outcome_of(check), "said": master_words(check)}
    if isinstance(check.get("unjudged"), dict):
        words["unjudged"] = _in_words(check["unjudged"])
    return {**check, **words}
