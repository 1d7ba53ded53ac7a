"""`vqad demo` (behind `make demo`): the main job end to end on embedded defaults.

synth -> train one category -> eval -> export -> serve (ONNX Runtime, recording every
result) -> camera streams the category's test images -> watch saves overlays -> the dashboard
shows the line and a headless browser saves a picture of it -> live accuracy, rate and latency ->
clean shutdown -> a scripted operator reviews rejects in the record ->
the reviewed evidence is exported as training data -> the threshold is recalibrated on good
images from the line. Each step is the real command in its own process.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from edge.dashboard.server import wait_until_serving
from edge.errors import VqadError
from edge.transport import free_loopback_port

FRAMES = "tcp://127.0.0.1:5555"
RESULTS = "tcp://127.0.0.1:5556"
# The demo's camera sends at a line's pace, so that the latency its dashboard and summary show is
# a line's. Sent as fast as the daemon took them, the 100 test images queued at once and the
# picture read 0.8 s (p50) of waiting in the queue; the daemon's capacity is `make bench`'s.
CAMERA_FPS = 20


def _vqad(*args: str) -> list[str]:
    return [sys.executable, "-m", "vqad.cli", *args]


def _step(title: str, *args: str) -> None:
    print(f"\n== {title}: vqad {' '.join(args)}", flush=True)
    t0 = time.monotonic()
    if subprocess.run(_vqad(*args)).returncode != 0:
        raise VqadError(f"demo step failed: {title}")
    print(f"   ({time.monotonic() - t0:.0f} s)", flush=True)


def run_demo(
    workdir: Path,
    category: str = "bracket",
    minutes: float = 3.0,
    image_size: str = "auto",
    frames: str = FRAMES,
    results: str = RESULTS,
) -> dict:
    """synth -> train -> eval -> export -> serve + watch + camera -> live accuracy, in WORKDIR."""
    workdir.mkdir(parents=True, exist_ok=True)
    data, model = workdir / "data" / category, workdir / "model"
    _prepare(workdir, category, minutes, image_size)
    print("\n== serve, stream the test images, watch", flush=True)
    manifest, jsonl = workdir / "manifest.csv", workdir / "results.jsonl"
    code, elapsed = _stream(workdir, data / "test", model, frames, results, manifest, jsonl)
    summary = live_accuracy(manifest, jsonl, elapsed)
    summary["daemon_exit_code"] = code
    summary["record"] = _review_loop(workdir, data, manifest)
    (workdir / "demo-summary.json").write_text(json.dumps(summary, indent=2))
    _print_summary(summary, workdir)
    return summary


def _prepare(workdir: Path, category: str, minutes: float, image_size: str) -> None:
    """The data (synthesised once), a trained run (kept), its evaluation and its export."""
    data, run, report, model = workdir / "data", workdir / "run", workdir / "report", workdir / "model"
    if not (data / category).is_dir():
        _step(f"synthesise a benchmark of {category}", "synth", str(data), "--categories", category)
    train = ["train", str(data / category), "--out", str(run), "--max-minutes", str(minutes)]
    if not (run / "checkpoint.pt").is_file():
        _step(f"train {category} for {minutes:g} min", *train, "--image-size", str(image_size))
    elif _unfinished(run):  # a demo stopped while it trained: its run goes on
        _step(f"go on training {category} for {minutes:g} min", *train, "--resume")
    _step("evaluate on the test set", "eval", str(run), str(data / category), "--out", str(report))
    _step("export ONNX FP32 + FP16", "export", str(run), "--out", str(model), "--force")


def _unfinished(run: Path) -> bool:
    """Whether the run's checkpoint is from before its training's end (train.run.Run.unfinished)."""
    from train.run import load_run

    return load_run(run).unfinished() is not None


def _start_daemon(workdir: Path, model: Path, frames: str, results: str, metrics_port: int) -> subprocess.Popen:
    """`vqad serve` in its own process, returned once it says it is ready."""
    ready = workdir / "serve.ready"
    ready.unlink(missing_ok=True)
    for old in (workdir / "line.db", workdir / "line.db-wal", workdir / "line.db-shm"):
        old.unlink(missing_ok=True)
    shutil.rmtree(workdir / "evidence", ignore_errors=True)
    serve = subprocess.Popen(
        _vqad("serve", str(model), "--frames", frames, "--results", results, "--ready-file", str(ready),
              "--set", "edge.publish_frames=true", "--record", _record_url(workdir),
              "--evidence-dir", str(workdir / "evidence"), "--metrics-port", str(metrics_port))
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not ready.exists():
        if serve.poll() is not None or time.monotonic() > deadline:
            serve.kill()
            raise VqadError("the daemon did not start (see its log above)")
        time.sleep(0.1)
    return serve


def _stream(
    workdir: Path, test_dir: Path, model: Path, frames: str, results: str, manifest: Path, jsonl: Path
) -> tuple[int, float]:
    """The daemon, a watcher writing every result to `jsonl`, the dashboard, and a camera
    streaming the test images; -> (the daemon's exit code after SIGTERM, seconds from first
    frame to last result)."""
    metrics_port = free_loopback_port()
    serve = _start_daemon(workdir, model, frames, results, metrics_port)
    dashboard = _start_dashboard(workdir, results, metrics_port)
    try:
        n_images = len(sorted(test_dir.rglob("*.png")))
        jsonl.unlink(missing_ok=True)
        watch = subprocess.Popen(
            _vqad("watch", results, "--save-dir", str(workdir / "overlays"), "--jsonl", str(jsonl),
                  "--count", str(n_images), "--timeout", "30", "--summary-json", str(workdir / "watch-summary.json"))
        )  # fmt: skip
        time.sleep(1.0)  # let the subscriber connect before the first result
        t0 = time.monotonic()
        camera = subprocess.run(
            _vqad("camera", str(test_dir), "--to", frames, "--camera-id", "demo-cam", "--manifest", str(manifest),
                  "--fps", str(CAMERA_FPS))
        )  # fmt: skip
        watch.wait(timeout=120)
        elapsed = time.monotonic() - t0
        if camera.returncode != 0:
            raise VqadError("the camera failed")
        _screenshot(dashboard, workdir / "dashboard.png")
    finally:
        dashboard.process.terminate()
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(timeout=60)
        dashboard.process.wait(timeout=30)
    return code, elapsed


class _Dashboard:
    def __init__(self, process: subprocess.Popen, url: str):
        self.process, self.url = process, url


def _start_dashboard(workdir: Path, results: str, metrics_port: int) -> _Dashboard:
    port = free_loopback_port()
    process = subprocess.Popen(
        _vqad("dashboard", "--results", results, "--record", _record_url(workdir), "--port", str(port),
              "--metrics", f"http://127.0.0.1:{metrics_port}/metrics")
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    # Subscribed before the first frame; without it the demo goes on, and the picture says so.
    if not wait_until_serving(url, process):
        print(f"   the dashboard did not answer at {url}", flush=True)
    return _Dashboard(process, url)


def _screenshot(dashboard: _Dashboard, out: Path) -> None:
    """A picture of the dashboard as an operator sees it after the stream (headless Chromium)."""
    from edge.dashboard.browser import BrowserMissingError, screenshot

    print(f"\n== the dashboard at {dashboard.url}: a picture with a headless browser", flush=True)
    try:
        print(f"   {screenshot(dashboard.url, out)}", flush=True)
    except BrowserMissingError as exc:
        print(f"   no picture: {exc}", flush=True)


def _print_summary(summary: dict, workdir: Path) -> None:
    from train.metrics import figure

    print("\n== live results against the ground truth")
    print(f"   frames {summary['frames']}, results {summary['results']} ({summary['by_status']})")
    print(
        f"   accuracy {summary['accuracy']:.3f}, false rejects {summary['false_rejects']}/{summary['good']}, "
        f"missed defects {summary['missed']}/{summary['defects']}, live image AUROC {figure(summary['live_auroc'])}"
    )
    fps, code, latency = summary["throughput_fps"], summary["daemon_exit_code"], summary["latency_ms"]
    p50, p99 = (f"{latency[q]:.0f} ms" if latency[q] is not None else "-" for q in ("p50", "p99"))
    print(f"   {fps:.1f} frames/s end to end (the camera sent {CAMERA_FPS}/s); latency p50 {p50}, p99 {p99} "
          f"(received -> published); daemon exit code {code}")  # fmt: skip
    rec = summary["record"]
    n_good = rec["threshold_source"]["n_images"]
    print(f"   record: {rec['rows']} rows ({rec['rejects']} rejects), reviews {rec['reviews']}, "
          f"exported {rec['exported']}, threshold now {rec['threshold']:.5g} from {n_good} good images")  # fmt: skip
    if rec["confirmed_defects_passing"] is not None:
        print(f"   confirmed defects the new threshold lets pass: {rec['confirmed_defects_passing']}")
    report = workdir / "report" / "report.html"
    print(f"   report: {report}  overlays: {workdir / 'overlays'}  model: {workdir / 'model'}")


def _record_url(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'line.db').resolve()}"


def _review_loop(workdir: Path, data: Path, manifest: Path) -> dict:
    """A scripted operator reviews rejects as the manifest's ground truth says (a rejected good
    part as a false reject, when there is one, and a real defect), the reviewed evidence is
    exported in the MVTec layout, and the model's threshold is recalibrated on good images from
    the line plus any false reject."""
    from edge.record import Record

    url = _record_url(workdir)
    sources = {(r["camera_id"], int(r["frame_id"])): Path(r["source"]) for r in csv.DictReader(open(manifest))}
    # The model's rejects: a frame the camera health gate failed shows no part to review.
    rejects = [r for r in Record(url).results(decision="fail", limit=10_000) if r["unfit"] is None]
    good = [r for r in rejects if sources[(r["camera_id"], r["frame_id"])].parent.name == "good"]
    defects = [r for r in rejects if sources[(r["camera_id"], r["frame_id"])].parent.name != "good"]
    reviewed = []
    for row, verdict in ((good[:1], "false_reject"), (defects[:1], "defect")):
        for r in row:
            kind = sources[(r["camera_id"], r["frame_id"])].parent.name
            extra = ["--kind", kind] if verdict == "defect" else []
            _step(f"an operator reviews reject {r['frame_id']} ({kind})", "review", url, r["camera_id"],
                  str(r["frame_id"]), "--verdict", verdict, "--by", "demo-operator", *extra)  # fmt: skip
            reviewed.append(verdict)
    exported = workdir / "reviewed"
    shutil.rmtree(exported, ignore_errors=True)
    _step("export the reviewed evidence", "records", url, "--export-reviewed", str(exported))
    line_good = workdir / "line_good"  # the line's good parts, and what the operator cleared
    shutil.rmtree(line_good, ignore_errors=True)
    # The cleared reject is a frame of one of these images (the demo's camera sends the test set):
    # that image goes, so that the folder holds each part once, as a line's would.
    cleared = {sources[(r["camera_id"], r["frame_id"])].name for r in good[:1]}
    shutil.copytree(data / "test" / "good", line_good, ignore=lambda _folder, names: [n for n in names if n in cleared])
    if (exported / "train" / "good").is_dir():
        shutil.copytree(exported / "train" / "good", line_good, dirs_exist_ok=True)
    confirmed = exported / "test"  # the defects the operator confirmed: how many the new threshold lets pass
    check = ["--defects", str(confirmed)] if confirmed.is_dir() else []
    _step("recalibrate the threshold on good images from the line", "calibrate", str(workdir / "model"), str(line_good),
          *check)  # fmt: skip
    threshold = json.loads((workdir / "model" / "model.json").read_text())["threshold"]
    return {
        "rows": len(Record(url).results(limit=1_000_000)),
        "rejects": len(rejects),
        "reviews": reviewed,
        "exported": sorted(str(p.relative_to(exported)) for p in exported.rglob("*.png")),
        "threshold": threshold["value"],
        "threshold_source": threshold["source"],
        "confirmed_defects_passing": threshold["defects"]["missed"] if "defects" in threshold else None,
    }


def live_accuracy(manifest: Path, jsonl: Path, elapsed_s: float) -> dict:
    from train.metrics import image_auroc

    sources = {(r["camera_id"], int(r["frame_id"])): r["source"] for r in csv.DictReader(open(manifest))}
    results = [json.loads(line) for line in open(jsonl)] if jsonl.exists() else []
    by_status: dict[str, int] = {}
    labels, scores, correct, fr, missed = [], [], 0, 0, 0
    latencies = sorted(h["latency_ms"]["total"] for h in results if h.get("latency_ms"))
    for h in results:
        by_status[h["status"]] = by_status.get(h["status"], 0) + 1
        source = sources.get((h["camera_id"], h["frame_id"]))
        if h["status"] != "ok" or source is None:
            continue
        defect = Path(source).parent.name != "good"
        failed = h["decision"] == "fail"
        labels.append(int(defect))
        scores.append(h["score"])
        correct += int(defect == failed)
        fr += int(failed and not defect)
        missed += int(defect and not failed)
    n = len(labels)
    return {
        "frames": len(sources),
        "results": len(results),
        "by_status": by_status,
        "accuracy": correct / n if n else 0.0,
        "good": labels.count(0),
        "defects": labels.count(1),
        "false_rejects": fr,
        "missed": missed,
        "live_auroc": image_auroc(labels, scores),  # None when the stream held one class only
        "throughput_fps": len(results) / elapsed_s if elapsed_s > 0 else 0.0,
        "latency_ms": {q: _quantile(latencies, f) for q, f in (("p50", 0.5), ("p99", 0.99))},
    }


def _quantile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank quantile of sorted values; None for none."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


def main_demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    endpoints = {"frames": args.frames or FRAMES, "results": args.results or RESULTS}
    summary = run_demo(Path(args.workdir), args.category, args.minutes, args.image_size, **endpoints)
    complete = summary["results"] == summary["frames"] == summary["record"]["rows"]
    return 0 if complete and summary["daemon_exit_code"] == 0 else 1
