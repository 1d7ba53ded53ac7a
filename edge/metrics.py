"""Prometheus metrics of the daemon (prometheus-client), in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from edge.errors import ConfigError
from edge.recent import RecentDict

_LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000)


# vqad_camera_frames' health label: the camera health gate's verdict on a frame.
HEALTH_LABELS = ("fit", "unfit", "unchecked")


class DaemonMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._pipeline(r)
        self._senders(r)
        self._life(r)
        self._record(r)
        self._model(r)
        self._cameras(r)

    def _pipeline(self, r: CollectorRegistry) -> None:
        """Frames in, their decoding and inference, results out."""
        self.frames_in = Counter("vqad_frames_in", "Frame messages read from the frames socket", registry=r)
        self.unreadable = Counter(
            "vqad_unreadable_messages", "Messages without readable camera_id/frame_id", registry=r
        )
        self.results = Counter("vqad_results", "Results published", ["status", "decision"], registry=r)
        self.queue_depth = Gauge("vqad_queue_depth", "Frames waiting for inference", registry=r)
        self.decode_seconds = Counter(
            "vqad_decode_seconds",
            "Seconds spent reading frames into the model's input (parse, decode, resize), all decoding threads "
            "together: near vqad_decode_workers a second, decoding sets the daemon's pace",
            registry=r,
        )
        self.decode_workers = Gauge(
            "vqad_decode_workers", "Threads that decode frames (1: the receiver thread alone)", registry=r
        )
        self.batch_size = Histogram(
            "vqad_batch_size", "Frames per inference batch", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.latency = Histogram(
            "vqad_latency_ms",
            "Latency per frame, by stage",
            ["stage"],
            buckets=_LATENCY_BUCKETS_MS,
            registry=r,
        )
        self.backend_errors = Counter("vqad_backend_errors", "Inference batches that raised", registry=r)

    def _senders(self, r: CollectorRegistry) -> None:
        """What the frames' senders got wrong: their clocks, their frame ids, their keys; and this
        machine's own clock."""
        self.clock_off = Counter(
            "vqad_frames_clock_off",
            "Frames whose ts_ns is more than 5 minutes off the daemon's receive time (the log names the camera)",
            registry=r,
        )
        self.clock_behind = Gauge(
            "vqad_clock_behind_seconds",
            "How far this machine's clock reads before a time it has passed (the model package's export, the "
            "record's newest result), read at each scrape; 0 when it reads after both",
            registry=r,
        )
        self.clock_steps = Counter(
            "vqad_clock_steps", "Steps of this machine's wall clock over a minute (NTP, a person, an RTC)", registry=r
        )
        self.frame_ids_back = Counter(
            "vqad_frame_ids_back",
            "Frames whose frame_id is not above their camera's previous one: a restarted sender counting from 0, "
            "or two senders with one camera id",
            registry=r,
        )
        self.senders_mixed = Counter(
            "vqad_camera_senders_mixed",
            "Frames of a camera id from the sender before its previous frame's: two senders at once with one camera "
            "id (frames that name their sender, as vqad camera's do)",
            registry=r,
        )
        self.curve_refusals = Counter(
            "vqad_curve_refusals", "Peers, and a removed key's messages, refused by CURVE", registry=r
        )

    def _life(self, r: CollectorRegistry) -> None:
        """The daemon's life: ready, stalled, and how its runs before this one ended."""
        self.ready = Gauge("vqad_ready", "1 once warmed up and serving", registry=r)
        self.stalled = Gauge(
            "vqad_stalled", "1 while a loop of the daemon has not come round (edge.watchdog)", registry=r
        )
        self.previous_exit_unclean = Gauge(
            "vqad_previous_exit_unclean",
            "1 if the previous run of this daemon did not shut down cleanly",
            registry=r,
        )
        self.unclean_exits = Gauge("vqad_unclean_exits", "Unclean exits seen by this state dir, ever", registry=r)

    def _record(self, r: CollectorRegistry) -> None:
        """The line's record and its evidence."""
        self.recorded = Counter("vqad_recorded", "Results written to the line's record", registry=r)
        self.unrecorded = Counter(
            "vqad_unrecorded", "Results not recorded: the record's buffer was full, or the daemon stopped", registry=r
        )
        self.record_pending = Gauge("vqad_record_pending", "Results waiting for the record's writer", registry=r)
        self.record_behind = Gauge(
            "vqad_record_behind_seconds",
            "How long the oldest result without its row in the record has waited (0: every result stored)",
            registry=r,
        )
        self.record_errors = Counter("vqad_record_errors", "Record transactions that failed (retried)", registry=r)
        self.record_set_aside = Counter(
            "vqad_record_set_aside",
            "Damaged SQLite records set aside with their evidence, a new one started in their place",
            registry=r,
        )
        self.evidence_failed = Counter(
            "vqad_evidence_failed",
            "Results recorded without their evidence: it could not be written, or the frames waiting for it "
            "were at their bound",
            registry=r,
        )
        self.results_expired = Counter(
            "vqad_results_expired", "Results removed from the record past record_keep_days", registry=r
        )
        self.evidence_removed = Counter(
            "vqad_evidence_removed", "Frames whose evidence the disk quota removed (oldest first)", registry=r
        )
        self.results_removed_for_space = Counter(
            "vqad_results_removed_for_space",
            "Results removed from a SQLite record, oldest first, to keep record_min_free_gb on its disk",
            registry=r,
        )

    def _model(self, r: CollectorRegistry) -> None:
        """The model that serves, its threshold and reloads, and the vqad that serves it."""
        self.reloads = Counter("vqad_model_reloads", "Model packages swapped in while serving", registry=r)
        self.reload_failures = Counter(
            "vqad_model_reload_failures", "Reloads refused: the package failed to load, verify or warm up", registry=r
        )
        self.threshold = Gauge("vqad_threshold", "The threshold in force", registry=r)
        self.build_info = Gauge(
            "vqad_build_info", "1, labelled with the vqad version that serves: a fleet's versions in one query",
            ["version"], registry=r,
        )  # fmt: skip

    def _cameras(self, r: CollectorRegistry) -> None:
        """Per camera: its frames, alarms, master parts and pause (the 1,024 seen most recently)."""
        self.camera_frames = Counter(
            "vqad_camera_frames",
            "Frames taken for inference per camera, by the camera health gate's verdict (fit, unfit, unchecked)",
            ["camera", "health"],
            registry=r,
        )
        self._counted_cameras: RecentDict[str, bool] = RecentDict(on_evict=self._forget_camera)
        self.drift_ks = Gauge(
            "vqad_drift_ks", "KS statistic: recent scores vs the calibration images'", ["camera"], registry=r
        )
        self.drift_alarm = Gauge("vqad_drift_alarm", "1 while a camera's scores have drifted", ["camera"], registry=r)
        self.master_parts = Counter(
            "vqad_master_parts",
            "Master parts checked (edge.master_good_parts, edge.master_defective_parts): right, decided as "
            "expected; wrong, decided otherwise by the model; or unproven, a frame it did not judge (unfit, "
            "an error)",
            ["camera", "outcome"],
            registry=r,
        )
        self.master_checked = Gauge(
            "vqad_master_parts_checked_timestamp_seconds",
            "When the model last judged one of a camera's master parts (Unix time; kept over restarts)",
            ["camera"],
            registry=r,
        )
        self.master_current = Gauge(
            "vqad_master_parts_current",
            "1 while a camera's master parts include one checked on the model and threshold served now; 0 "
            "after a reload or a threshold set, until they are run again",
            ["camera"],
            registry=r,
        )
        self.fail_rate = Gauge(
            "vqad_fail_rate", "The share of a camera's last 100 decisions that failed", ["camera"], registry=r
        )
        self.fail_rate_alarm = Gauge(
            "vqad_fail_rate_alarm",
            "1 while a camera's fails among its last 100 decisions are over edge.fail_rate_alarm",
            ["camera"],
            registry=r,
        )
        self.camera_paused = Gauge(
            "vqad_camera_paused",
            "1 while vqad ctl pause holds a camera: its frames get an error result, not a decision",
            ["camera"],
            registry=r,
        )

    def count_camera_frame(self, camera_id: str, health: str) -> None:
        """One frame of `camera_id` taken for inference; health: fit, unfit (the camera health
        gate fails it) or unchecked (no gate). The 1,024 cameras seen most recently keep their
        counts; an older one's leave the endpoint, as its drift gauges do."""
        self._counted_cameras[camera_id] = True
        self.camera_frames.labels(camera_id, health).inc()

    def _forget_camera(self, camera_id: str, _value: object) -> None:
        for health in HEALTH_LABELS:
            _remove(self.camera_frames, camera_id, health)

    def show_version(self, version: str) -> None:
        """vqad_build_info{version} 1."""
        self.build_info.clear()
        self.build_info.labels(version).set(1)

    def show_paused(self, cameras: set[str]) -> None:
        """vqad_camera_paused: 1 for each camera in `cameras`; a camera resumed leaves it."""
        self.camera_paused.clear()
        for camera_id in cameras:
            self.camera_paused.labels(camera_id).set(1)

    def forget_drift(self, camera_id: str | None = None) -> None:
        """Drop one camera's drift gauges, or every camera's (None: a new model, new windows)."""
        for gauge in (self.drift_ks, self.drift_alarm):
            if camera_id is None:
                gauge.clear()
            else:
                _remove(gauge, camera_id)

    def forget_fail_rate(self, camera_id: str) -> None:
        """Drop a camera's fail-rate gauges (it was dropped for newer camera ids)."""
        for gauge in (self.fail_rate, self.fail_rate_alarm):
            _remove(gauge, camera_id)

    def serve(self, port: int, host: str) -> None:
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"the daemon cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc


def _remove(metric: Counter | Gauge, *labels: str) -> None:
    """Drop one series of a labelled metric; none is there when nothing of it was ever counted
    (a drift window that never filled, a camera without a decision)."""
    try:
        metric.remove(*labels)
    except KeyError:
        pass
