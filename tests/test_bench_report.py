"""The bench report: the parts that --only names, and its Markdown, written at the end of an
hours-long run from the JSON that each part left, so it must render reports with and without the
figures later commits added."""

from __future__ import annotations

import json

import pytest

import benchmarks.run as bench_run
from benchmarks.backends import bench_backends
from benchmarks.common import write_report
from benchmarks.run import backends_markdown, markdown


def _daemon_row(with_cpu: bool) -> dict:
    spread = {"median": 60.0, "min": 58.0, "max": 62.0, "n": 2}
    row = {
        "end_to_end_fps": spread,
        "raw_backend_fps": spread,
        "ratio": {"median": 0.75, "min": 0.7, "max": 0.8, "n": 2},
        "ratio_to_one_worker": {"median": 0.95, "min": 0.9, "max": 1.0, "n": 2},
        "latency_under_load": {
            "50%": {"latency_ms": {"p50": 40.0, "p99": 60.0}},
            "90%": {"latency_ms": {"p50": 50.0, "p99": 110.0}},
        },
        "daemon_peak_rss_mib": 540.0,
        "frames_without_result": 0,
    }
    if with_cpu:
        row["cpu_ms_per_frame"] = {"daemon": 34.8, "camera_and_subscriber": 8.8}
    return row


def test_the_daemon_table_shows_where_the_cores_went_and_renders_older_reports():
    report = {
        "date": "2026-12-01 00:00",
        "machine": {"cpu": "a CPU", "cores": 2},
        "daemon": {"max_batch": 8, "max_delay_ms": 10.0, "inference_workers": 2, "1024x1280x3": _daemon_row(True)},
    }
    assert "| 1024x1280x3 | 60.0 | 60.0 | 0.75 (min 0.70) |" in markdown(report)
    assert "| 0.95 | 34.8 / 8.8 |" in markdown(report)
    report["daemon"]["1024x1280x3"] = _daemon_row(False)
    assert "| 0.95 | n/a |" in markdown(report)


def test_the_decoding_stage_has_a_row_per_encoding_and_a_column_per_count_of_threads():
    def rates(*fps: float) -> dict:
        return {"fps_by_decode_workers": dict(zip(("1", "2", "4"), fps, strict=True)), "bytes": 1000}

    decoding = {"frame": "1024x1280x3", "model_input": [128, 128], "raw": rates(700, 1300, 1300),
                "jpeg": rates(150, 280, 230), "png": rates(32, 70, 70)}  # fmt: skip
    daemon = {"max_batch": 8, "max_delay_ms": 10.0, "1024x1280x3": _daemon_row(True), "decoding": decoding}
    report = {"date": "2026-12-05 00:00", "machine": {"cpu": "a CPU", "cores": 2}, "daemon": daemon}
    text = markdown(report)
    assert "| 1 decode worker(s) | 2 decode worker(s) | 4 decode worker(s) |" in text
    assert "| jpeg | 1,000 | 150 | 280 | 230 |" in text and "| png | 1,000 | 32 | 70 | 70 |" in text


def test_a_part_alone_on_an_earlier_workdir_exports_what_it_measures(synth_root, tiny_run, tmp_path, monkeypatch):
    """`--only drift --accuracy-from WORKDIR`: the drift part measures the accuracy part's first run,
    exported by the bench itself when no speed part ran before it; the parts not named do not run."""
    workdir = tmp_path / "bench"
    (workdir / "runs" / "bracket").mkdir(parents=True)
    (workdir / "data").symlink_to(synth_root)
    (workdir / "runs" / "bracket" / "ours__configs__").symlink_to(tiny_run)
    monkeypatch.setattr(bench_run, "write_report", lambda report: write_report(report, tmp_path / "results"))
    argv = ["--only", "drift", "--accuracy-from", str(workdir), "--workdir", str(workdir), "--image-size", "32"]
    report = json.loads(bench_run.main(argv).read_text())
    assert (workdir / "model" / "model.json").is_file()
    assert report["drift"]["good_windows"] > 0 and report["drift"]["false_alarm_rate"] is not None
    assert set(report) == {"date", "machine", "quick", "accuracy", "drift", "seconds"}


def test_a_part_not_named_in_only_is_refused(capsys):
    with pytest.raises(SystemExit) as stopped:
        bench_run.parse_args(["--only", "accuracy,drfit"])
    assert stopped.value.code == 2
    assert "no part named drfit" in capsys.readouterr().err


def test_the_backends_part_times_each_backend_and_says_why_tensorrt_is_not_measured(tiny_run, tiny_model):
    """The 60 frames/s target is read from this part: each backend at each batch size, the
    FLOPs behind them, and TensorRT's absence said, not raised, where it is not installed."""
    be = bench_backends(tiny_run, tiny_model, batch_sizes=(1, 8), repeats=1, min_seconds=0.01)
    for name in ("pytorch_eager", "onnxruntime_fp32", "onnxruntime_fp16"):
        assert all(be[name][b]["frames_per_s"]["median"] > 0 for b in ("1", "8")), name
    assert be["flops_per_frame"]["total"] > be["flops_per_frame"]["vqvae"] > 0
    table = "\n".join(backends_markdown(be))
    assert "| onnxruntime_fp32 | " in table and "Achieved at batch 8: pytorch_eager" in table
    if be["tensorrt_fp16"].get("measured") is False:  # no TensorRT here: the reason, in the table
        assert be["tensorrt_fp16"]["reason"] and "| tensorrt_fp16 | not measured: " in table
