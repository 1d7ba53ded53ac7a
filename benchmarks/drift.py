"""The drift alarm on a trained model: how often it fires on held-out good parts (false
alarms), and whether a +20% gain on the camera raises it within one window.

The reference is the scores the package's threshold was calibrated on (model.json); the good
windows are drawn, with replacement, from the category's good test images, scored by the
package's FP32 graph; the drifted windows from the same images with their grey levels x 1.2.

    python -m benchmarks.drift MODEL_DIR DATA_CAT [--windows N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def bench_drift(model_dir: Path, category: Path, windows: int = 200, seed: int = 0) -> dict[str, Any]:
    from edge.drift import WINDOW, DriftMonitor
    from edge.package import FP32_FILE, load_package
    from edge.recalibrate import GraphScorer, good_frames

    pkg = load_package(model_dir)
    history = [pkg.meta["threshold"], *reversed(pkg.meta.get("threshold_history", []))]
    reference = next((t["scores"] for t in history if t.get("source", {}).get("by") == "vqad eval"), None)
    reference = reference or pkg.meta["threshold"].get("scores")
    if not reference:
        raise SystemExit(f"{model_dir}: its threshold keeps no calibration scores (export it again)")
    frames, _ = good_frames(category / "test" / "good", pkg.input_format)
    scores = GraphScorer(model_dir / FP32_FILE)
    good = scores(frames)
    gained = scores(np.clip(frames.astype(np.float32) * 1.2, 0, 255).astype(np.uint8))
    rng = np.random.default_rng(seed)
    monitor = DriftMonitor(reference)
    false_alarms = 0
    for w in range(windows):
        for score in rng.choice(good, WINDOW):
            monitor.add(f"good{w}", float(score))
        false_alarms += f"good{w}" in monitor.alarmed
    first_alarm = None
    for i, score in enumerate(rng.choice(gained, WINDOW)):
        monitor.add("gain", float(score))
        if first_alarm is None and "gain" in monitor.alarmed:
            first_alarm = i + 1
    return {
        "reference_scores": len(reference),
        "good_images": len(good),
        "window": WINDOW,
        "ks_limit": monitor.limit,
        "good_windows": windows,
        "false_alarm_rate": false_alarms / windows,
        "gain_1.2_alarm_after_frames": first_alarm,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("category", type=Path)
    ap.add_argument("--windows", type=int, default=200)
    args = ap.parse_args()
    print(json.dumps(bench_drift(args.model, args.category, args.windows), indent=2))
