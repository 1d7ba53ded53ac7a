"""`vqad info MODEL_DIR`: what a model package is, in the lines a person reads before serving it
or when an audit names it by its sha256: where it came from, what it takes in, its threshold and
that threshold's history, what its evaluation measured, and whether its graphs are the files it
was exported with. Read from model.json alone (and the graphs' bytes, for their sha256): it runs
on the edge box, without torch. What a daemon's state folder keeps over the package (`vqad ctl`'s
threshold and paused cameras) is said after it: the line serves that, not the card's threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge.inspection import judged_words, rectangles_words
from edge.package import ModelPackage, sha256_file
from edge.peaks import NUMBERED, crowd
from edge.state import Overrides


def package_card(pkg: ModelPackage, states: dict[str, str] | None = None) -> list[str]:
    """The package's card, a line per subject; the graphs' sha256 checked against model.json
    (`states`: graph_states(pkg), when already computed: each graph is read whole to hash it)."""
    meta = pkg.meta
    return [
        _origin(pkg),
        _input(pkg),
        _inspection(meta),
        *_files(pkg, graph_states(pkg) if states is None else states),
        f"threshold  {pkg.threshold:.6g}: {_calibration(meta.get('threshold') or {})}",
        *(
            f"  before   {h.get('value', float('nan')):.6g}: {_calibration(h)}"
            for h in reversed(meta.get("threshold_history") or [])
        ),  # fmt: skip
        _evaluation((meta.get("metrics") or {}).get("evaluation") or {}),
        _parity(meta.get("parity") or {}),
        _training(meta),
    ]


def _origin(pkg: ModelPackage) -> str:
    source = pkg.meta.get("source") or {}
    run = f" from the run {source['run']}" if source.get("run") else ""
    step = f" at step {source['step']}" if source.get("step") is not None else ""
    checkpoint = f" (checkpoint {source['checkpoint_sha256'][:12]})" if source.get("checkpoint_sha256") else ""
    exported = pkg.meta.get("created", "?")
    return f"{pkg.root}: model {pkg.name}, version {pkg.version}, exported {exported}{run}{step}{checkpoint}"


def _input(pkg: ModelPackage) -> str:
    h, w = pkg.image_size
    return (
        f"input      {h}x{w} (HxW) x {pkg.channels} channel{'s' if pkg.channels > 1 else ''} ({pkg.color_order}); "
        f"16-bit frames read by their {pkg.pixel_bits} bits"
    )


GRAPH_STATES = {
    "verified": "verified",
    "differs": "DIFFERS: the file changed since the export",
    "missing": "MISSING",
}


def graph_states(pkg: ModelPackage) -> dict[str, str]:
    """Each graph model.json lists: "verified" (its sha256 is model.json's), "differs" or "missing"."""
    states = {}
    for name, listed in sorted(pkg.files.items()):
        path = pkg.root / name
        states[name] = "missing" if not path.is_file() else "verified" if sha256_file(path) == listed else "differs"
    return states


def _files(pkg: ModelPackage, states: dict[str, str]) -> list[str]:
    """A line per graph (and the inspection mask): its sha256 as model.json lists it (the record
    names a result's model by model.onnx's), and whether the file still has it."""
    return [
        f"{'graph' if name.endswith('.onnx') else 'mask':<10} {name}: sha256 {pkg.files[name]} {GRAPH_STATES[state]}"
        for name, state in states.items()
    ]


def _inspection(meta: dict[str, Any]) -> str:
    """What of the frame the decision judges: the whole, or what the inspection mask leaves in."""
    inspection = meta.get("inspection")
    if not inspection:
        return f"inspects   {judged_words(inspection)}"
    if "rectangles" in inspection:
        given = f"rectangles {rectangles_words(inspection)} left out"
    else:
        given = f"the mask image {inspection.get('image', '?')}"
    return f"inspects   {judged_words(inspection)}: {given} (vqad calibrate, with the threshold)"


def _calibration(c: dict[str, Any]) -> str:
    """Who set a threshold, when, on what, and the bound its image count puts on false rejects."""
    source = c.get("source") or {}
    on = source.get("folder") or source.get("images") or "?"
    n = c.get("n_val")
    bound = c.get("frr_upper_bound_95")
    return "; ".join(
        part
        for part in (
            f"{source.get('by') or 'set'} {c.get('calibrated') or ''}".strip(),
            f"{n} good images from {on}" if n else "",
            f"the {c['quantile']:g} quantile, +1%" if c.get("quantile") is not None else "",
            f"false rejects on new good images <= {bound:.1%} (95% confidence)" if bound is not None else "",
            _crowded(c),
        )
        if part
    )


def _crowded(c: dict[str, Any]) -> str:
    """Where the calibration's highest good images peak, when they crowd one place (edge.peaks),
    and the threshold leaving it out would set, where `vqad calibrate` measured it."""
    crowded = crowd(c["peaks"], c["scores"]) if c.get("peaks") and c.get("scores") else None
    if crowded is None:
        return ""
    measured = f" (left out, the threshold would be {c['crowd']['threshold']:.4g})" if "crowd" in c else ""
    return f"{crowded.count} of its {NUMBERED} highest peak at {crowded.where}{measured}"


def _evaluation(e: dict[str, Any]) -> str:
    if not e.get("n_images"):
        return "evaluation none packaged: the run had no test images, or none evaluated its weights before the export"
    figures = ", ".join(
        f"{label} {e[key]:.3f}" for key, label in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"))
        if e.get(key) is not None
    )  # fmt: skip
    at = (
        f"at its threshold {e['threshold']:.6g}: false rejects {e['false_reject_rate']:.1%} of {e.get('n_good')} good, "
        f"misses {e['miss_rate']:.1%} of {e.get('n_defect')} defects"
        if e.get("false_reject_rate") is not None and e.get("miss_rate") is not None
        else ""
    )
    return f"evaluation {figures or 'no figure'} on {e['n_images']} test images" + (f"; {at}" if at else "")


def _parity(p: dict[str, Any]) -> str:
    torch_fp32, fp16 = p.get("fp32_vs_torch") or {}, p.get("fp16_vs_fp32") or {}
    if not torch_fp32:
        return "parity     none recorded"
    score_error, bound = torch_fp32.get("score_max_abs_error", float("nan")), torch_fp32.get("bound_max_abs_error", 0)
    agree = fp16.get("decision_agreement")
    return (
        f"parity     {p.get('n_images')} images: FP32 graph vs PyTorch, score max abs error {score_error:.2g} "
        f"(bound {bound:.2g}); FP16 vs FP32, map relative error {fp16.get('map_relative_error', float('nan')):.2g}"
        + (f", decisions agree {agree:.3f}" if agree is not None else "")
    )


def _training(meta: dict[str, Any]) -> str:
    t = (meta.get("metrics") or {}).get("training") or {}
    versions = meta.get("versions") or {}
    built = ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("vqad", "torch"))
    ended = f" (ended by {t['ended_by']})" if t.get("ended_by") else ""
    images = f", {t['n_train']} images trained on, {t.get('n_val')} held out" if t.get("n_train") is not None else ""
    return f"training   {t.get('step', '?')} steps{ended}{images}" + (f"; {built}" if built else "")


def served_lines(pkg: ModelPackage, state_dir: Path, configured: float | None = None) -> list[str]:
    """What a daemon started on `pkg` with the state folder `state_dir` keeps over the package
    (edge.state.Overrides): the threshold set with `vqad ctl` that it serves instead of the
    configured one, or one it drops at its start; the cameras it keeps paused. `configured`: the
    threshold its config starts it on (edge.serving.configured_threshold), when `vqad info
    --config` names the config; None: the package's, edge.threshold unknown. Empty when none."""
    overrides = Overrides.load(state_dir)
    kept, lines = overrides.threshold, []
    if configured is not None and configured != pkg.threshold:
        lines.append(f"configured {configured:.6g}: edge.threshold in the config, served instead of the "
                     f"package's {pkg.threshold:.6g}")  # fmt: skip
    unless = " (unless edge.threshold is set: vqad info --config)" if configured is None else ""
    configured = pkg.threshold if configured is None else configured
    if kept is not None:
        said = (f"{kept['value']:.6g}: vqad ctl set-threshold by {kept['source'].get('who') or 'unknown'} at "
                f"{kept['source'].get('at') or '?'} ({kept['source'].get('reason') or 'no reason'})")  # fmt: skip
        if overrides.applies(pkg.sha256, configured):
            lines.append(f"served at  {said}, kept in {overrides.path}: a daemon started on this package serves it, "
                         f"not {configured:.6g}{unless}")  # fmt: skip
        else:
            lines.append(f"note       {said}, kept in {overrides.path}, replaced {kept['replaces']:.6g} on another "
                         "package, calibration or edge.threshold: a daemon's start drops it")  # fmt: skip
    if overrides.paused:
        lines.append(f"paused     {', '.join(overrides.paused)}: with vqad ctl pause, kept in {overrides.path}")
    return lines
