"""`make bench`: every benchmark in one run, a dated JSON report and a Markdown table.

    python -m benchmarks.run [--quick] [--data DIR] [--real DIR] [--steps N] [--minutes M] [--ablation]
                             [--only accuracy,scoring,backends,daemon,transport] [--accuracy-from WORKDIR]

The backend and daemon figures are measured on the model trained by the accuracy part
("ours" on the first category), so every figure in one report comes from one run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from benchmarks.accuracy import Budget, budget_text, real_categories
from benchmarks.common import machine, vqad, write_report

PARTS = ("accuracy", "scoring", "backends", "daemon", "record", "dashboard", "drift", "health", "transport")


def _f(x: Any, nd: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and x != x) else f"{x:.{nd}f}"


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def real_markdown(acc: dict[str, Any] | None) -> list[str]:
    """The real categories' table: accuracy, and the rates at the calibrated threshold."""
    if not acc:
        return []
    lines = [
        f"## Real images ({acc['data']}; --image-size {acc['image_size']}, {budget_text(acc['budget'])} per model)",
        "",
        "| category | model | input (H x W) | steps | image AUROC | pixel AUROC | false rejects | misses "
        "| misses peaking on the defect / elsewhere | misses at 1% / 5% FRR | FRR bound (95%) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cat, rows in acc["categories"].items():
        for name, m in rows.items():
            size = " x ".join(str(side) for side in m["input_size"])
            lines.append(
                f"| {cat} | {name} | {size} | {steps_cell(m)} | {_f(m['image_auroc'])} | {_f(m['pixel_auroc'])} "
                f"| {_pct(m.get('false_reject_rate'))} | {_pct(m.get('miss_rate'))} | {peaks_cell(m)} "
                f"| {_pct(m.get('miss_rate_at_1pct_frr'))} / "
                f"{_pct(m.get('miss_rate_at_5pct_frr'))} | {_pct(m.get('frr_upper_bound_95'))} |"
            )
    return [*lines, "", *trade_markdown(acc)]


def trade_markdown(acc: dict[str, Any]) -> list[str]:
    """What `--target-frr` would trade on each real category (vqad eval's `target_frr_choices`):
    per target, the test images' false rejects and misses at the threshold its validation images
    set, the median over the row's runs. Nothing where no row gave it (the baseline, an older report)."""
    traded = {(cat, name): m["target_frr_choices"] for cat, rows in acc["categories"].items()
              for name, m in rows.items() if m.get("target_frr_choices")}  # fmt: skip
    if not traded:
        return []
    targets = sorted({c["target_frr"] for trade in traded.values() for c in trade})
    lines = [
        "What `--target-frr` would trade: for each target (a column), false rejects / misses on the test images "
        "at the threshold the target sets on the validation images (the rule `vqad calibrate` follows), the "
        "median over the runs.",
        "",
        "| category | model | " + " | ".join(f"{100 * t:g}%" for t in targets) + " |",
        "|---|---|" + "---|" * len(targets),
    ]
    for (cat, name), trade in traded.items():
        cells = {c["target_frr"]: f"{_pct(c['false_reject_rate'])} / {_pct(c['miss_rate'])}" for c in trade}
        lines.append(f"| {cat} | {name} | " + " | ".join(cells.get(t, "") for t in targets) + " |")
    return [*lines, ""]


def peaks_cell(row: dict[str, Any]) -> str:
    """Where the misses' maps peak, added up over the row's runs: "13 / 11", with "over 3 runs"
    where there were several. Blank where nothing counted them (the baseline, an older report)."""
    peaks = row.get("defect_peaks")
    if not peaks:
        return ""
    runs = peaks.get("runs", 1)
    over = f" over {runs} runs" if runs > 1 else ""
    return f"{peaks['passed']['on_defect']} / {peaks['passed']['elsewhere']}{over}"


def steps_cell(row: dict[str, Any]) -> str:
    """The steps a row's trainings reached (min–max over repeats), marked where one stopped short
    of the budget: its figures are not the budget's. Blank for the baseline, which does not train."""
    if "steps" not in row:
        return ""
    spread = row.get("spread", {}).get("steps") or {"min": row["steps"], "max": row["steps"]}
    steps = f"{spread['min']:g}" if spread["min"] == spread["max"] else f"{spread['min']:g}–{spread['max']:g}"
    return f"{steps}, short of {row['budget']['steps']}" if spread["min"] < row["budget"]["steps"] else steps


def health_markdown(health: dict[str, Any] | None) -> list[str]:
    if not health:
        return []
    kinds = ("blurred", "darkened", "overexposed", "moved", "frozen")
    lines = [
        "## Camera health gate (configs/edge.yaml limits; share of good test images flagged, of unfit frames caught)",
        "",
        "| category | aligned | good flagged | closest good: sharpness / exposure / clipped / shift | "
        + " | ".join(kinds)
        + " |",
        "|---|---|---|---|" + "---|" * len(kinds),
    ]
    for cat, h in health.items():
        caught = " | ".join(_pct(h[f"{k}_caught"]) if k != "moved" or h["aligned"] else "n/a" for k in kinds)
        c = h["good_closest"]
        closest = f"{_f(c['sharpness_ratio'], 2)} / {_f(c['exposure'])} / {_f(c['clipped'])} / {_f(c['shift'])}"
        aligned = "yes" if h["aligned"] else "no"
        lines.append(f"| {cat} | {aligned} | {_pct(h['good_flagged'])} | {closest} | {caught} |")
    return [*lines, ""]


def dashboard_markdown(dash: dict[str, Any] | None) -> list[str]:
    if not dash:
        return []
    d, storm = dash["daemon"], dash["daemon_storm"]
    lines = [
        "## The dashboard",
        "",
        f"- daemon at 256 x 256 with the dashboard and {d['pages']} pages following it (their drawing on "
        f"their own screens): {d['on_fps']['median']:.1f} frames/s against {d['off_fps']['median']:.1f} alone "
        f"(drop {100 * d['drop']:.1f}%); with every frame a reject: drop {100 * storm['drop']:.1f}%; "
        f"the dashboard used {100 * d['cpu_cores'].get('dashboard', 0):.1f}% of a core, the page clients "
        f"{100 * d['cpu_cores'].get('pages', 0):.1f}%",
    ]
    if "browser_note" in dash:
        return [*lines, f"- the page in a browser: not measured ({dash['browser_note']})", ""]
    page, here = dash["page"], dash["daemon_chromium_here"]
    return [
        *lines,
        f"- the same with {here['pages']} headless Chromium drawing on this machine's own 2 cores: "
        f"drop {100 * here['drop']:.1f}%",
        f"- one page at {page['results_per_s']:.0f} results/s for {page['seconds']:.0f} s: "
        f"{page['redraws_per_s']:.1f} redraws/s, timer lag p99 {page['page_lag_ms']['p99']:.1f} ms "
        f"(max {page['page_lag_ms']['max']:.1f}), {page['long_tasks']} long tasks, counts "
        f"{page['shown']}/{page['published']}, dashboard {100 * page['dashboard_cpu_cores']:.0f}% of a core",
        *_page_memory_lines(dash.get("page_memory")),
        "",
    ]


def _page_memory_lines(mem: dict[str, Any] | None) -> list[str]:
    """One page's memory from its first sample to its last (benchmarks.dashboard.page_memory)."""
    if not mem or len(mem["samples"]) < 2:
        return []
    first, last = mem["samples"][0], mem["samples"][-1]
    return [
        f"- one page open {last['s'] - first['s']} s at {mem['results_per_s']:.0f} results/s (one in ten a reject): "
        f"DOM nodes {first['nodes']} -> {last['nodes']}, listeners {first['listeners']} -> {last['listeners']}, "
        f"JS heap {first['heap_mb']:.2f} -> {last['heap_mb']:.2f} MB; the dashboard "
        f"{first['dashboard_rss_mb']:.0f} -> {last['dashboard_rss_mb']:.0f} MiB resident"
    ]


def accuracy_markdown(acc: dict[str, Any] | None) -> list[str]:
    """The accuracy table: every category and variant, median (min–max) over the repeats."""
    if not acc:
        return []
    lines = [
        f"## Accuracy (--image-size {acc['image_size']}, {budget_text(acc['budget'])} per model)",
        "",
        "| category | model | steps | image AUROC | pixel AUROC | AUPRO | F1-max | train s | GFLOPs/frame |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cat, rows in acc["categories"].items():
        for name, m in rows.items():
            flops = m.get("flops_per_frame")
            spread = m.get("spread", {})

            def cell(key: str, nd: int = 3, spread: dict = spread, m: dict = m) -> str:
                sp = spread.get(key)
                if sp and sp["n"] > 1:  # median (min-max) over the repeats
                    return f"{_f(sp['median'], nd)} ({_f(sp['min'], nd)}–{_f(sp['max'], nd)})"
                return _f(m[key], nd)

            lines.append(
                f"| {cat} | {name} | {steps_cell(m)} | {cell('image_auroc')} | {cell('pixel_auroc')} | "
                f"{cell('aupro')} | {cell('f1_max')} | {cell('train_seconds', 0)} | "
                f"{_f(flops / 1e9 if flops else None, 2)} |"
            )
    lines.append("")
    return lines


def drift_markdown(drift: dict[str, Any] | None) -> list[str]:
    """The drift alarm: false alarms on good windows, and how soon a gain raises it."""
    if not drift:
        return []
    after = drift["gain_1.2_alarm_after_frames"]
    gain = f"raised it after {after} frames" if after is not None else f"did not raise it in {drift['window']} frames"
    lines = [
        "## Drift alarm",
        "",
        f"- false alarms on {drift['good_windows']} held-out good windows of {drift['window']}: "
        f"{100 * drift['false_alarm_rate']:.1f}%; a +20% gain {gain}",
        "",
    ]
    return lines


def record_markdown(rec: dict[str, Any] | None) -> list[str]:
    """The record writer's rows/s and what recording costs the daemon."""
    if not rec:
        return []
    pg = rec["postgresql_rows_per_s"]
    lines = [
        "## The line's record",
        "",
        f"- writer: {rec['sqlite_rows_per_s']:.0f} rows/s into SQLite, "
        + (f"{pg:.0f} rows/s into PostgreSQL" if pg else f"PostgreSQL not measured ({rec.get('postgresql_note')})"),
        *_queries_lines(rec.get("queries")),
        f"- daemon at 256 x 256 with the record (evidence for 10% of passes and every fail): "
        f"{rec['daemon']['ratio']:.3f} of its throughput without (cost {100 * rec['daemon']['cost']:.1f}%)",
        "",
    ]
    return lines


def _queries_lines(q: dict[str, Any] | None) -> list[str]:
    if not q:
        return []
    return [
        f"- the dashboard's queries over {q['rows']:,} results of 7 days ({q['rows_today']:,} today): the daily "
        f"tally {q['daily_s']:.2f} s counted afresh (Record.daily), {q['page_ask_s']:.2f} s for a page's minute "
        f"ask with the closed days held; a camera's 24 newest rejects {1000 * q['gallery_s']:.1f} ms"
        + (
            f"; a day's unreviewed fails for review ({q['review_queue_rows']:,}) {1000 * q['review_queue_s']:.1f} ms"
            if "review_queue_s" in q
            else ""
        )
    ]


def ablation_markdown(sa: dict[str, Any] | None) -> list[str]:
    """The scorer ablated post hoc: one row per variant, one column per category."""
    if not sa:
        return []
    cats = list(sa)
    lines = [
        "## Scoring ablation (each category's default run, scored post hoc; image / pixel AUROC / AUPRO; "
        "false rejects / misses at the threshold each variant calibrates)",
        "",
        "| error map | " + " | ".join(cats) + " |",
        "|---|" + "---|" * len(cats),
    ]
    for name in next(iter(sa.values()))["variants"]:
        cells = []
        for cat in cats:
            r = sa[cat]["variants"][name]
            cells.append(
                f"{_f(r['image_auroc'])} / {_f(r['pixel_auroc'])} / {_f(r['aupro'])}; "
                f"{_pct(r.get('false_reject_rate'))} / {_pct(r.get('miss_rate'))}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def backends_markdown(be: dict[str, Any] | None) -> list[str]:
    """Frames/s and latency per backend and batch size, FLOPs and the share of the CPU peak."""
    if not be:
        return []
    lines = [
        "## Backends (frames/s, median of repeats; latency per batch in ms)",
        "",
        "| backend | " + " | ".join(f"batch {b}" for b in be["batch_sizes"]) + " |",
        "|---|" + "---|" * len(be["batch_sizes"]),
    ]
    for name in ("pytorch_eager", "onnxruntime_fp32", "onnxruntime_fp16", "tensorrt_fp16"):
        if name not in be:
            continue
        if be[name].get("measured") is False:
            lines.append(f"| {name} | not measured: {be[name]['reason']} |")
            continue
        cells = []
        for b in be["batch_sizes"]:
            fig = be[name][str(b)]
            cells.append(f"{fig['frames_per_s']['median']:.1f} fps / {fig['latency_ms_per_batch']['median']:.1f} ms")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ratio = be["ort_fp32_over_torch"]
    lines += [
        "",
        "ONNX Runtime FP32 / PyTorch eager: " + ", ".join(f"batch {b}: {r:.2f}x" for b, r in ratio.items()),
        f"FLOPs per frame: {be['flops_per_frame']['total'] / 1e9:.3f} GFLOP "
        f"(VQ-VAE {be['flops_per_frame']['vqvae'] / 1e9:.3f}, scoring and head "
        f"{be['flops_per_frame']['scoring_and_head'] / 1e9:.3f}).",
        f"CPU peak estimate: {be['cpu_peak']['peak_flops'] / 1e9:.0f} GFLOP/s = {be['cpu_peak']['how']}.",
        "Achieved at batch 8: "
        + ", ".join(
            f"{n} {be[n]['8']['achieved_gflops']:.1f} GFLOP/s ({100 * be[n]['8']['fraction_of_cpu_peak']:.1f}% of peak)"
            for n in ("pytorch_eager", "onnxruntime_fp32", "onnxruntime_fp16")
            if "8" in be.get(n, {})
        ),
        "",
    ]
    return lines


def daemon_markdown(dm: dict[str, Any] | None) -> list[str]:
    """The daemon end to end against its raw backend, per frame size."""
    if not dm:
        return []
    lines = [
        f"## Daemon end to end (camera process -> daemon -> subscriber process, max_batch {dm['max_batch']}, "
        f"max_delay {dm['max_delay_ms']} ms, {dm.get('inference_workers', 1)} inference worker(s))",
        "",
        "The raw backend runs as the daemon configures it (the same workers and threads). The last "
        "ratio is to one backend instance with all the cores (`inference_workers: 1`). The CPU per frame at "
        "full load says where the cores went: the camera and subscriber processes (their start-up included) "
        "share the cores the raw backend has to itself.",
        "",
        "| frame | end-to-end fps | raw backend fps | ratio | p50 / p99 at 50% load (ms) "
        "| p50 / p99 at 90% load (ms) | peak RSS MiB | frames without a result | ratio to one worker "
        "| CPU ms a frame: daemon / camera + subscriber |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, d in dm.items():
        if not isinstance(d, dict) or "ratio" not in d:
            continue
        cells = {}
        for k, fig in d["latency_under_load"].items():
            p = fig["latency_ms"]
            cells[k] = f"{p.get('p50', float('nan')):.1f} / {p.get('p99', float('nan')):.1f}"
        lines.append(
            f"| {key} | {d['end_to_end_fps']['median']:.1f} | {d['raw_backend_fps']['median']:.1f} | "
            f"{d['ratio']['median']:.2f} (min {d['ratio']['min']:.2f}) | {cells['50%']} | {cells['90%']} | "
            f"{d['daemon_peak_rss_mib']:.0f} | {d.get('frames_without_result', 'n/a')} | "
            + (f"{d['ratio_to_one_worker']['median']:.2f} |" if "ratio_to_one_worker" in d else "n/a |")
            + (
                " {daemon:.1f} / {camera_and_subscriber:.1f} |".format(**d["cpu_ms_per_frame"])
                if "cpu_ms_per_frame" in d
                else " n/a |"
            )
        )
    lines.append("")
    return lines + decoding_markdown(dm.get("decoding"))


def decoding_markdown(dec: dict[str, Any] | None) -> list[str]:
    """The daemon's decoding stage alone, per encoding and count of `edge.decode_workers`."""
    if not dec:
        return []
    counts = list(dec["raw"]["fps_by_decode_workers"])
    lines = [
        f"### Decoding {dec['frame']} frames to the model's input, the stage alone (frames/s)",
        "",
        "What one receiver thread (1) caps the daemon at when inference is elsewhere (a GPU), and "
        "what more decoding threads (`edge.decode_workers`) take, each camera's frames kept in order.",
        "",
        "| encoding | message bytes | " + " | ".join(f"{n} decode worker(s)" for n in counts) + " |",
        "|---|---|" + "---|" * len(counts),
    ]
    for encoding in ("raw", "jpeg", "png"):
        rates = dec[encoding]["fps_by_decode_workers"]
        lines.append(
            f"| {encoding} | {dec[encoding]['bytes']:,} | " + " | ".join(f"{rates[n]:.0f}" for n in counts) + " |"
        )
    return lines + [""]


def transport_markdown(tr: dict[str, Any] | None) -> list[str]:
    """ZeroMQ's ceiling between processes, per frame size."""
    if not tr:
        return []
    lines = [
        "## Transport ceiling (raw pyzmq PUSH -> PULL, separate processes)",
        "",
        "| frame | ipc:// fps | tcp://127.0.0.1 fps |",
        "|---|---|---|",
    ]
    for key, d in tr.items():
        lines.append(
            f"| {key} | {d['ipc']['frames_per_s']['median']:.0f} ({d['ipc']['gbytes_per_s']:.2f} GB/s) | "
            f"{d['tcp']['frames_per_s']['median']:.0f} ({d['tcp']['gbytes_per_s']:.2f} GB/s) |"
        )
    lines.append("")
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# vqad benchmark, {report['date']} on {report['machine']['cpu']} ({report['machine']['cores']} cores)",
        "",
    ]
    lines += accuracy_markdown(report.get("accuracy"))
    lines += real_markdown(report.get("accuracy_real"))
    lines += drift_markdown(report.get("drift"))
    lines += record_markdown(report.get("record"))
    lines += dashboard_markdown(report.get("dashboard"))
    lines += health_markdown(report.get("health"))
    lines += ablation_markdown(report.get("scoring_ablation"))
    lines += backends_markdown(report.get("backends"))
    lines += daemon_markdown(report.get("daemon"))
    lines += transport_markdown(report.get("transport"))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="about 2 min per training, fewer repeats")
    ap.add_argument("--data", type=Path, help="an MVTec-layout root instead of vqad synth")
    ap.add_argument(
        "--real",
        type=Path,
        metavar="DIR",
        help="also measure the shipped defaults on every category under DIR (real images, MVTec layout)",
    )
    ap.add_argument("--steps", type=int, help="training steps per model (default: train.steps of configs/)")
    ap.add_argument(
        "--minutes", type=float, help="the guard per training (default: train.max_minutes of configs/; --quick 2)"
    )
    ap.add_argument("--image-size", default="auto", help="vqad train --image-size: N, HxW or auto (configs/)")
    ap.add_argument("--ablation", action="store_true", help="also train every ablation variant")
    ap.add_argument(
        "--repeats", type=int, default=1, help="trainings per accuracy variant (seeds 0..N-1): median, min, max"
    )
    ap.add_argument("--only", default=",".join(PARTS), help=f"the parts to run, comma-separated: {','.join(PARTS)}")
    ap.add_argument(
        "--workdir",
        type=Path,
        help="where the trained runs, synthesised data and exported model are kept (default: a new /tmp folder)",
    )
    ap.add_argument("--accuracy-from", type=Path, help="reuse the trained runs of an earlier --workdir")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.only.split(",")) - set(PARTS))
    if unknown:
        ap.error(f"--only: no part named {', '.join(unknown)} (the parts: {', '.join(PARTS)})")
    return args


class Bench:
    """One `make bench` run: its arguments, the report as its parts fill it (written after each,
    so that a part that fails keeps the ones before), and the run and model package that the
    speed parts measure."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.parts = set(args.only.split(","))
        self.budget = Budget.quick() if args.quick else Budget(args.steps, args.minutes)
        self.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vqad-bench-"))
        self.t0 = time.monotonic()
        self.report: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": machine(),
            "quick": args.quick,
        }
        self.report["machine"]["cpu_peak"].pop("flags", None)
        self._model_dir: Path | None = None
        self._speed_run: Path | None = None

    def begin(self, part: str) -> None:
        """A line as each part starts: the whole run is minutes (--quick) to hours."""
        minutes = (time.monotonic() - self.t0) / 60
        print(f"[bench] {part}: started {time.strftime('%H:%M')}, {minutes:.0f} min in", flush=True)

    def keep(self, key: str, value: Any) -> None:
        self.report[key] = value
        write_report(self.report)

    @property
    def accuracy(self) -> dict[str, Any] | None:
        return self.report.get("accuracy")

    def data_of(self, category: str) -> Path:
        return Path(self.report["accuracy"]["data"]) / category

    def run_dir(self) -> Path:
        """The default run of the accuracy part's first category; without that part, a short
        training of its own (enough to measure speed), once per bench run."""
        if self.accuracy:
            first = next(iter(self.accuracy["categories"].values()))
            return Path(first["ours (configs/)"]["run"])
        if self._speed_run is None:
            data, self._speed_run = self.workdir / "data", self.workdir / "speed-run"
            vqad("synth", data, "--categories", "bracket")
            vqad(
                "train",
                data / "bracket",
                "--out",
                self._speed_run,
                "--steps",
                "30",
                "--image-size",
                self.args.image_size,
            )
            vqad("eval", self._speed_run, data / "bracket", "--out", self._speed_run / "eval", "--no-pictures")
        return self._speed_run

    def model_dir(self) -> Path:
        """run_dir() exported, once per bench run."""
        if self._model_dir is None:
            self._model_dir = self.workdir / "model"
            vqad("export", self.run_dir(), "--out", self._model_dir, "--force")
        return self._model_dir


def _accuracy(b: Bench) -> None:
    if b.args.accuracy_from:
        from benchmarks.accuracy import collect_accuracy

        b.report["accuracy"] = collect_accuracy(b.args.accuracy_from, b.args.image_size)
    elif "accuracy" in b.parts:
        from benchmarks.accuracy import bench_accuracy

        b.begin("accuracy")
        args = b.args
        b.keep(
            "accuracy",
            bench_accuracy(args.data, b.budget, args.image_size, args.ablation, b.workdir, repeats=args.repeats),
        )


def _accuracy_real(b: Bench) -> None:
    if b.args.real and "accuracy" in b.parts:
        from benchmarks.accuracy import bench_real

        b.begin(f"accuracy on the real categories under {b.args.real}")
        b.keep("accuracy_real", bench_real(b.args.real, b.budget, b.args.image_size, b.workdir, repeats=b.args.repeats))


def _scoring_ablation(b: Bench) -> None:
    if "scoring" in b.parts and b.accuracy:
        from benchmarks.scoring import scoring_ablation

        b.begin("scoring ablation")
        # The scorer ablated post hoc on each category's default run (no extra training).
        categories = b.accuracy["categories"].items()
        runs = {cat: rows["ours (configs/)"]["run"] for cat, rows in categories if "ours (configs/)" in rows}
        b.keep("scoring_ablation", {cat: scoring_ablation(Path(run), b.data_of(cat)) for cat, run in runs.items()})


def _backends(b: Bench) -> None:
    if "backends" in b.parts:
        from benchmarks.backends import bench_backends

        run_dir, model_dir = b.run_dir(), b.model_dir()
        b.begin("backends")
        b.keep("backends", bench_backends(run_dir, model_dir, repeats=3 if b.args.quick else 5))


def _daemon(b: Bench) -> None:
    if "daemon" in b.parts:
        from benchmarks.daemon import bench_daemon

        model_dir = b.model_dir()
        b.begin("daemon")
        b.keep("daemon", bench_daemon(model_dir, quick=b.args.quick, repeats=2 if b.args.quick else 3))


def _record(b: Bench) -> None:
    if "record" in b.parts:
        from benchmarks.record import bench_record

        model_dir = b.model_dir()
        b.begin("record")
        b.keep("record", bench_record(model_dir, quick=b.args.quick))


def _dashboard(b: Bench) -> None:
    if "dashboard" in b.parts:
        from benchmarks.dashboard import bench_dashboard

        model_dir = b.model_dir()
        b.begin("dashboard")
        b.keep("dashboard", bench_dashboard(model_dir, quick=b.args.quick))


def _drift(b: Bench) -> None:
    if "drift" in b.parts and b.accuracy:
        from benchmarks.drift import bench_drift

        model_dir = b.model_dir()
        b.begin("drift")
        # The default run of the first category: its package, its good test images.
        b.keep("drift", bench_drift(model_dir, b.data_of(next(iter(b.accuracy["categories"])))))


def _health(b: Bench) -> None:
    if "health" in b.parts and (b.accuracy or b.args.real):
        from benchmarks.health import bench_health

        b.begin("camera health gate")
        roots = [b.data_of(c) for c in (b.accuracy or {}).get("categories", {})]
        roots += list(real_categories(b.args.real).values()) if b.args.real else []
        b.keep("health", bench_health(roots, b.args.image_size))  # each root at its own input size


def _transport(b: Bench) -> None:
    if "transport" in b.parts:
        from benchmarks.transport import bench_transport

        b.begin("transport")
        try:
            b.keep("transport", bench_transport(quick=b.args.quick))
        except zmq.Again:
            b.keep("transport", None)
            print("transport: a sender process did not deliver within 30 s; not measured")


# In this order: the speed parts measure the accuracy part's first run, exported once.
STEPS = (_accuracy, _accuracy_real, _scoring_ablation, _backends, _daemon, _record, _dashboard, _drift, _health,
         _transport)  # fmt: skip


def main(argv: list[str] | None = None) -> Path:
    """Run the parts --only names; write the dated JSON report and its Markdown table; return the
    report's path."""
    bench = Bench(parse_args(argv))
    # The measurements' own scratch folders are removed as each ends; this one is kept, for
    # --accuracy-from and for a look at the runs behind the figures.
    print(f"[bench] the runs and the model are kept in {bench.workdir}", flush=True)
    for step in STEPS:
        step(bench)
    report = bench.report
    report["seconds"] = time.monotonic() - bench.t0
    path = write_report(report)
    table = markdown(report)
    path.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"\nreport: {path}  (took {report['seconds'] / 60:.1f} min)")
    print(json.dumps({"report": str(path)}))
    return path


if __name__ == "__main__":
    main()
