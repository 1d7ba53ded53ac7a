"""`python -m benchmarks.soak`, for a few seconds: every frame answered, every malformed one an
error result, the RSS and latency windows reported; with the record, a row for every result; PNG
frames decoded side by side come back in full, the malformed ones as errors, as raw ones do. Its
folder (sockets, database, evidence) is gone when it returns."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from benchmarks import soak
from benchmarks.soak import BURST_FRAMES, run_soak


@pytest.mark.parametrize(
    ("record", "encoding", "decode_workers"), [(False, "raw", 0), (True, "raw", 0), (False, "png", 2)]
)
def test_a_short_soak_answers_every_frame(tiny_model, record, encoding, decode_workers, monkeypatch):
    made: list[Path] = []  # the soak's own folder: other processes of the suite make /tmp folders too
    real_scratch_dir = soak.scratch_dir

    @contextlib.contextmanager
    def noted_scratch_dir(prefix: str):
        with real_scratch_dir(prefix) as path:
            made.append(path)
            yield path

    monkeypatch.setattr(soak, "scratch_dir", noted_scratch_dir)
    out = run_soak(
        tiny_model, minutes=0.05, load=0.5, malformed=0.2, window_s=1.0, warmup_s=1.0, shape=(32, 32, 3),
        record_max_gb=0.001 if record else None, encoding=encoding, decode_workers=decode_workers,
    )  # fmt: skip
    assert out["frames_sent"] > BURST_FRAMES and out["malformed_sent"] > 0
    assert out["frames_lost"] == 0 and out["malformed_without_error_result"] == 0
    assert sum(out["results_by_status"].values()) == out["frames_sent"]
    assert out["results_by_status"]["error"] == out["malformed_sent"]
    assert out["p99_latency_windows"] and out["rss_windows"] and out["rss_start_mib"] > 0
    if record:
        assert out["record"]["rows"] == out["frames_sent"] and out["record"]["passed"]
    else:
        assert out["record"] is None
    assert len(made) == 1 and not made[0].exists() and made[0].parent == Path("/tmp")
