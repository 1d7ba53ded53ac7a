"""Train and evaluate: `vqad train`, `vqad eval`, `vqad calibrate`, `vqad embed`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from edge.frames import parse_size
from edge.inspection import MaskRequest, parse_rectangle, rectangles_words
from edge.threshold import MISSES_GUIDE
from vqad.commands.common import config_args, default_config, overrides, picture_arg, pixel_bits_arg

if TYPE_CHECKING:
    from train.config import ModelConfig, TrainConfig

log = logging.getLogger(__name__)

# Said by `vqad eval` and `vqad calibrate --defects` when a defect passes.
MISSES_HINT = f"what to do for each kind of miss: {MISSES_GUIDE}"


def _frr(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--target-frr is a share such as 0.01, got {text!r}") from None
    if not 0.0 < value < 0.5:
        raise argparse.ArgumentTypeError(f"--target-frr must be in (0, 0.5), got {text}")
    return value


def _rectangle(text: str) -> tuple[int, int, int, int]:
    """argparse type of --ignore: X,Y,W,H in the frame's pixels."""
    try:
        return parse_rectangle(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def size_arg(text: str) -> str:
    """argparse type of --image-size: N, HxW or auto, checked before anything runs."""
    if text != "auto":
        try:
            parse_size(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def model_and_train_configs(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    from edge.config import config_from, load_config
    from train.config import ModelConfig, TrainConfig

    m_over = overrides(args, "model")
    t_over = overrides(args, "train")
    size = getattr(args, "image_size", None)
    if size:
        m_over["image_size"] = size if size == "auto" else list(parse_size(size))
    if getattr(args, "pixel_bits", None) is not None:
        m_over["pixel_bits"] = args.pixel_bits
    if getattr(args, "max_minutes", None) is not None:  # 0 is refused by the config, not ignored
        t_over["max_minutes"] = args.max_minutes
    if getattr(args, "steps", None) is not None:
        t_over["steps"] = args.steps
    if getattr(args, "seed", None) is not None:
        t_over["seed"] = args.seed
    resumed = getattr(args, "out", None) if getattr(args, "resume", False) else None
    saved = _saved_meta(resumed, f"resuming with {resumed}'s model and train config")
    tuned_from = getattr(args, "init_from", None)
    if tuned_from:
        from train.run import check_run_dir

        check_run_dir(Path(tuned_from), "--init-from: ")
    source = saved or _saved_meta(tuned_from, f"fine-tuning with {tuned_from}'s model config")
    if source and not args.model_config:
        model_cfg = config_from(ModelConfig, source["model_config"], m_over, "model")
    else:
        model_cfg = load_config(ModelConfig, args.model_config or default_config("model"), m_over)
    if saved and not args.config:
        train_cfg = config_from(TrainConfig, saved["train_config"], t_over, "train")
    else:
        train_cfg = load_config(TrainConfig, args.config or default_config("train"), t_over)
    return model_cfg, train_cfg


def _saved_meta(run_dir: str | Path | None, why: str) -> dict | None:
    """The checkpoint meta (configs migrated) of a run whose configs stand in for the shipped
    ones, and a log line that says so; None without a run or its checkpoint.

    --resume continues the run as it was saved and --init-from RUN takes RUN's model config
    (its weights fit no other): the shipped configs would otherwise stand in for every flag not
    given again, and the run be refused as another model. --set, --steps or a config file
    change only what they name."""
    from train.checkpoint import CHECKPOINT_NAME, load_checkpoint

    if not run_dir or not (Path(run_dir) / CHECKPOINT_NAME).is_file():
        return None
    log.info("%s; the flags given change what they name", why)
    return load_checkpoint(Path(run_dir) / CHECKPOINT_NAME)["meta"]


def cmd_train(args: argparse.Namespace) -> int:
    from train.loop import train

    model_cfg, train_cfg = model_and_train_configs(args)
    summary = train(args.data, args.out, model_cfg, train_cfg, resume=args.resume, init_from=args.init_from)
    print(f"trained {summary['step']} steps; validation L2 {summary['val_l2']:.5f}; run in {args.out}")
    if args.plot:
        from train.plots import curves_plot

        if curves_plot(Path(args.out) / "metrics.csv", Path(args.out) / "curves.png"):
            print(f"curves: {Path(args.out) / 'curves.png'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from train.evaluate import evaluate
    from train.metrics import figure, percent

    m = evaluate(args.run, args.data, args.out, pictures=not args.no_pictures)
    print(
        f"image AUROC {figure(m['image_auroc'], 4)}  pixel AUROC {figure(m['pixel_auroc'], 4)}  "
        f"AUPRO {figure(m['aupro'], 4)}  F1-max {figure(m['f1_max'], 4)}  threshold {m['threshold']:.5g}  "
        f"({m['n_images']} images)"
    )
    rates = []
    if m["false_reject_rate"] is not None:
        rates.append(f"false rejects {percent(m['false_reject_rate'])} of {m['n_good']} good")
    if m["miss_rate"] is not None:
        by_kind = ", ".join(f"{kind} {k['passed']} of {k['of']}" for kind, k in m["per_kind_misses"].items())
        apart = f" ({by_kind})" if len(m["per_kind_misses"]) > 1 else ""  # one kind's figures are the whole's
        rates.append(f"misses {percent(m['miss_rate'])} of {m['n_defect']} defects{apart}")
        passed = m["defect_peaks"]["passed"]  # a threshold question, or a defect the model does not see
        if sum(passed.values()):
            rates.append(
                f"the misses' maps peak on the defect in {passed['on_defect']}, elsewhere in {passed['elsewhere']}"
            )
    if m["miss_rate_at_1pct_frr"] is not None:
        rates.append(
            f"misses at 1% / 5% false rejects: {percent(m['miss_rate_at_1pct_frr'])} / "
            f"{percent(m['miss_rate_at_5pct_frr'])}"
        )
    rates.append(
        f"false rejects on new good images <= {m['frr_upper_bound_95']:.1%} "
        f"(95% confidence, {m['threshold_calibration']['n_val']} calibration images)"
    )
    print(f"at the threshold: {'; '.join(rates)}")
    if (choices := _choices_line(m)) is not None:
        print(choices)
    if m["good_peaks_crowd"] is not None:
        print(m["good_peaks_crowd"])
    print(f"report: {Path(args.out) / 'report.html'}  figures: {Path(args.out) / 'metrics.json'}")
    if m["miss_rate"]:
        print(MISSES_HINT)
    return 0


def _choices_line(m: dict) -> str | None:
    """The other false-reject targets, set on the validation images as the threshold is, and
    what each rejects and misses here: the trade `vqad calibrate --target-frr` makes."""
    from train.metrics import percent

    if m["miss_rate"] is None and m["false_reject_rate"] is None:
        return None
    said = "; ".join(
        f"{c['target_frr']:.0%} rejects {percent(c['false_reject_rate'])} and misses {percent(c['miss_rate'])} "
        f"({c['threshold']:.5g})"
        for c in m["target_frr_choices"]
    )
    return f"--target-frr, its threshold set on the validation images: {said}"


def _writable_before_scoring(folder: Path) -> None:
    """OSError (exit 7) unless `folder`, where the new threshold is written, can be written: found
    before the images are scored (minutes on an edge box), not after. A package on a read-only
    mount (an image-based update of the box) is calibrated as a copy."""
    import errno

    from edge.durable import write_refusal

    if folder.is_dir() and (refused := write_refusal(folder)) is not None:
        reason = "read-only" if refused.errno == errno.EROFS else "not writable by this user"
        raise OSError(refused.errno, f"the new threshold is written there, and it is {reason}: calibrate a copy "
                      "in a folder this user writes, and serve that", str(folder))  # fmt: skip


def cmd_calibrate(args: argparse.Namespace) -> int:
    """A run's or a model package's threshold, on new good images; a package needs no torch."""
    _writable_before_scoring(args.target)
    if args.picture is not None:
        from edge.durable import require_writable

        require_writable(args.picture.parent, args.picture)  # a folder it could not make: said before the scoring
    threshold = _calibrate_target(args)
    _print_calibration(threshold, args)
    return 0


def _calibrate_target(args: argparse.Namespace) -> dict:
    """The new threshold of the package or run at args.target (written there); DataError for
    anything else, or a flag that does not fit it."""
    from edge.errors import DataError

    if (args.target / "model.json").is_file():
        from edge.recalibrate import calibrate_package

        if args.data is not None:
            raise DataError(f"{args.target} is a model package: it needs no training data (--data is for a run)")
        if args.choose_scale or args.fuse_scales is not None:  # a package's map is its graph
            raise DataError(
                f"{args.target} is a model package: another map scale is another graph, and so are other fused "
                "maps. Rebuild the map on the training run (vqad calibrate RUN_DIR GOOD_DIR --defects DIR "
                "--choose-scale, or --fuse-scales F ...), then export again"
            )
        threshold = calibrate_package(
            args.target, args.good, args.target_frr, args.defects, args.force, _mask_request(args)
        )
    elif (args.target / "checkpoint.pt").is_file():
        from train.recalibrate import calibrate_run

        if _mask_request(args) is not None:
            raise DataError(
                f"{args.target} is a training run: an inspection mask is set on the model package the line serves "
                f"(vqad export {args.target} --out MODEL_DIR, then vqad calibrate MODEL_DIR {args.good} --ignore ...)"
            )

        fuse = None if args.fuse_scales is None else tuple(args.fuse_scales)
        threshold = calibrate_run(
            args.target, args.good, args.target_frr, args.defects, args.choose_scale, fuse, args.force, args.data
        )
    elif (args.target / "train" / "good").is_dir():
        raise DataError(f"{args.target} is a data folder (train/good), not a run nor a model package: the GOOD_DIR "
                        "comes second (vqad calibrate RUN_OR_MODEL_DIR GOOD_DIR)")  # fmt: skip
    else:
        raise DataError(f"{args.target} is neither a run (checkpoint.pt) nor a model package (model.json)")
    return threshold


def _mask_request(args: argparse.Namespace) -> MaskRequest | None:
    """What the flags ask of the inspection mask; None to keep the package's."""
    if not (args.ignore or args.mask is not None or args.inspect_all):
        return None
    return MaskRequest(tuple(args.ignore or ()), args.mask, args.inspect_all)


def _print_calibration(threshold: dict, args: argparse.Namespace) -> None:
    """What `vqad calibrate` set, the picture it drew, and what a serving daemon does with it."""
    left_out, copies = (threshold["source"].get(k, 0) for k in ("training_images_left_out", "copies_left_out"))
    unseen = f", {left_out} the model trained on left out" if left_out else ""
    unseen += f", {copies} {'copy of another' if copies == 1 else 'copies of others'} left out" if copies else ""
    print(
        f"threshold {threshold['value']:.6g} ({threshold['quantile']:.3g} quantile of {threshold['n_val']} good images "
        f"under {args.good}{unseen}, +1%); {threshold['frr_bound_note']}"
    )
    picture = _calibration_picture(threshold, args)
    if picture is not None:
        print(f"picture: {picture}")
    if "fused" in threshold:
        fused = threshold["fused"]
        factors = ", ".join(f"{f:g}" for f in fused["fuse_scales"]) or "none (one map)"
        print(f"fused map scales {factors} (were {fused['before'] or 'none'}), saved in the run's checkpoint")
    if "scale" in threshold:
        print(_scale_line(threshold["scale"]))
    if "defects" in threshold:
        print(_defects_line(threshold["defects"], args.defects))
        if threshold["defects"]["missed"]:
            print(MISSES_HINT)
    if (args.target / "model.json").is_file():  # a daemon reads its package's threshold when it loads it
        _print_peaks(threshold, args)
        _print_inspection(threshold, args)
        print(f"a daemon serving {args.target} decides by the threshold it loaded until `vqad ctl ENDPOINT reload` "
              "(or systemctl reload vqad)")  # fmt: skip


def _print_peaks(threshold: dict, args: argparse.Namespace) -> None:
    """Where the good images' scores came from, drawn (edge.peaks): where a threshold set too high
    by one place of the part shows."""
    from edge.peaks import crowd, crowd_words, left_out_words, peaks_file

    picture = peaks_file(args.target, args.good, threshold)
    if picture is not None:
        print(f"where each good image scores highest: {picture} (a cluster of red where no defect can be is a "
              "place to leave out: --ignore X,Y,W,H)")  # fmt: skip
    if "crowd" in threshold:  # where they crowd, and what leaving it out would do, measured
        print(left_out_words(threshold["crowd"], threshold["value"], threshold.get("defects")))
    elif (crowded := crowd(threshold["peaks"], threshold["scores"])) is not None:
        print(crowd_words(crowded))


def _print_inspection(threshold: dict, args: argparse.Namespace) -> None:
    """The inspection mask the threshold was calibrated through, and its picture over a good image."""
    from edge.inspection import inspection_picture

    share = threshold["inspection"]["inspected_share"]
    if threshold["inspection"]["mask_sha256"] is None:
        if args.inspect_all:
            print("inspection mask removed: the whole frame is judged")
        return
    picture = inspection_picture(args.target, args.good)
    drawn = f" (drawn over a good image: {picture})" if picture is not None else ""
    print(f"inspection mask: {share:.1%} of the frame judged, the rest left out of the decision{drawn}")
    if (replaced := threshold["inspection"].get("replaced")) is not None:
        print(_replaced_words(replaced))


def _replaced_words(replaced: dict) -> str:
    """What a new mask replaced, and how to keep it: `--ignore` sets the whole mask, not a part."""
    if "rectangles" not in replaced:
        return (f"it replaces the mask image {replaced.get('image') or '?'}: what only that one left out is "
                "judged again")  # fmt: skip
    keep = " ".join("--ignore " + ",".join(str(v) for v in r) for r in replaced["rectangles"])
    return (f"it replaces the mask that left out {rectangles_words(replaced)}: what only that one left out is "
            f"judged again (to leave it out too, calibrate again with {keep} beside the new ones)")  # fmt: skip


def _calibration_picture(threshold: dict, args: argparse.Namespace) -> Path | None:
    """The good (and confirmed defect) images' scores against the new and the previous threshold,
    written to --picture or TARGET/calibration.png. -> its path; None (and a warning) when it
    cannot be written: the threshold is saved by then, and stands."""
    import cv2

    from edge.histogram import score_histogram

    # The previous threshold is drawn where it was one of this map's (a rebuilt map has none).
    previous = (threshold.get("against_previous") or {}).get("previous_value")
    defects = threshold.get("defects", {}).get("scores")
    title = (
        f"{args.target.name}: {threshold['n_val']} good images under {args.good}, "
        f"target {threshold['target_frr']:.1%} false rejects"
    )
    choices = threshold.get("defects", {}).get("target_frr_choices") or ()  # with --defects: what each would let pass
    picture = score_histogram(threshold["scores"], threshold["value"], previous, defects, title, choices=choices)
    path = args.picture or args.target / "calibration.png"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # --picture pictures/line.png, a folder not made yet
        written = cv2.imwrite(str(path), picture)
    except (OSError, cv2.error):  # the folder refused after all, or a suffix OpenCV does not write
        written = False
    if not written:
        log.warning("the threshold is saved; its picture could not be written to %s", path)
        return None
    return path


def _scale_line(choice: dict) -> str:
    """What `vqad calibrate --choose-scale` compared and kept."""
    n = choice["defects"]["n_images"]
    compared = ", ".join(f"{r['scale']:g}: {r['missed']}" for r in choice["compared"])
    return (
        f"map scale {choice['chosen']:g} (was {choice['before']:g}), saved in the run's checkpoint; confirmed "
        f"defects of {n} that pass at each scale's threshold: {compared}. Export the run again for the line"
    )


def _defects_line(d: dict, folder: Path) -> str:
    """What `vqad calibrate --defects` found: the confirmed defects this threshold lets pass."""
    line = (
        f"confirmed defects under {folder}: {d['missed']} of {d['n_images']} score under the threshold and would "
        f"pass ({d['miss_rate']:.1%}; at most {d['miss_rate_upper_bound_95']:.1%} of such defects with 95% confidence)"
    )
    if "at_previous_threshold" in d:
        line += f"; {d['at_previous_threshold']['missed']} passed the previous threshold"
    if d["lowest_missed"]:
        line += "; lowest: " + ", ".join(f"{m['image']} ({m['score']:.4g})" for m in d["lowest_missed"])
    if d.get("target_frr_choices"):  # the trade --target-frr makes on these good images and defects
        trade = "; ".join(
            f"{c['target_frr']:.0%} lets {round(c['miss_rate'] * d['n_images'])} pass ({c['threshold']:.5g})"
            for c in d["target_frr_choices"]
        )
        line += f"\n--target-frr, its threshold set on these good images: {trade}"
    return line


def cmd_embed(args: argparse.Namespace) -> int:
    from edge.durable import require_writable
    from edge.errors import DataError
    from train.embed import npz_path, write_embeddings

    out = npz_path(args.out)
    if out.is_dir():
        raise DataError(f"--out {out} is a folder: name the file to write (emb.npz)")
    require_writable(out.parent, out)  # before the images are read and encoded
    result = write_embeddings(args.run, args.images, out, args.kind)
    print(f"wrote {out}: {args.kind} {result[args.kind].shape} for {len(result['paths'])} images")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The model's commands: train, eval, calibrate, embed."""
    _add_train(sub)
    _add_eval(sub)
    _add_calibrate(sub)
    _add_embed(sub)


def _add_train(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a VQ-VAE on CAT/train/good")
    t.add_argument(
        "data", type=Path, metavar="DATA_CAT", help="a category folder: its train/good images are trained on"
    )
    t.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="where the run's checkpoints and logs go")
    config_args(t)
    t.add_argument(
        "--image-size",
        type=size_arg,
        metavar="N|HxW|auto",
        help="model input: N x N, height x width, or auto (configs/model.yaml's default: the training "
        "images' median aspect ratio, the short side model.short_side)",
    )
    t.add_argument(
        "--pixel-bits",
        type=pixel_bits_arg,
        metavar="N",
        help="the bits a 16-bit image's counts fill, 8 to 16: 12 for a Mono12 camera (model.pixel_bits; default 16)",
    )
    t.add_argument("--max-minutes", type=float, help="a guard on the training's wall time (train.max_minutes)")
    t.add_argument("--steps", type=int, help="training steps (train.steps)")
    t.add_argument("--seed", type=int, help="random seed (train.seed)")
    t.add_argument("--resume", action="store_true", help="continue RUN_DIR from its checkpoint")
    t.add_argument(
        "--init-from",
        type=Path,
        metavar="RUN_DIR",
        help="fine-tune: start from another run's weights (e.g. on its data plus reviewed images)",
    )
    t.add_argument("--plot", action="store_true", help="render RUN_DIR/curves.png at the end")
    t.set_defaults(func=cmd_train)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="calibrate the threshold and evaluate on CAT/test")
    e.add_argument("run", type=Path, metavar="RUN_DIR", help="a trained run (vqad train)")
    e.add_argument(
        "data",
        type=Path,
        metavar="DATA_CAT",
        help="the category folder it was trained on, with its test/ (where it is now: a moved folder is read here)",
    )
    e.add_argument("--out", type=Path, required=True, metavar="REPORT_DIR", help="where the report and its pictures go")
    e.add_argument("--no-pictures", action="store_true", help="the figures only, without the report's pictures")
    e.set_defaults(func=cmd_eval)


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("calibrate", help="recalibrate the threshold of a run or model package on new good images")
    c.add_argument(
        "target", type=Path, metavar="RUN_OR_MODEL_DIR", help="a run (vqad train) or a model package (vqad export)"
    )
    c.add_argument("good", type=Path, metavar="GOOD_DIR", help="good images from the line (searched recursively)")
    c.add_argument("--target-frr", type=_frr, help="share of good images to reject (default: as calibrated before)")
    c.add_argument(
        "--picture",
        type=picture_arg,
        metavar="PNG",
        help="where to draw the scores against the new and the previous threshold (default: TARGET/calibration.png)",
    )
    c.add_argument(
        "--defects",
        type=Path,
        metavar="DEFECT_DIR",
        help="confirmed defect images (searched recursively, e.g. the test/ of vqad records --export-reviewed): "
        "report how many the new threshold lets pass",
    )
    c.add_argument(
        "--choose-scale",
        action="store_true",
        help="a run only, with --defects: rebuild the map at each scale of train.recalibrate.SCALES and keep "
        "the one whose threshold lets the fewest defects pass (saved in the checkpoint; export again)",
    )
    c.add_argument(
        "--fuse-scales",
        type=float,
        nargs="*",
        metavar="F",
        help="a run only: rebuild its map fused with maps at these factors of its scale (none: one map), "
        "calibrated on the run's own good images as training does (saved in the checkpoint; export again)",
    )
    c.add_argument(
        "--data",
        type=Path,
        metavar="DATA_CAT",
        help="a run only: its category folder where it is now, when it has moved since training (--choose-scale "
        "and --fuse-scales read the run's good images)",
    )
    c.add_argument(
        "--force",
        action="store_true",
        help="calibrate even when most good images would be unfit on the line (the camera health gate): "
        "images of another product, camera or lighting",
    )
    _add_mask_flags(c)
    c.set_defaults(func=cmd_calibrate)


def _add_mask_flags(c: argparse.ArgumentParser) -> None:
    """The inspection mask's flags of `vqad calibrate` (edge.inspection): a package only."""
    c.add_argument(
        "--ignore",
        type=_rectangle,
        action="append",
        metavar="X,Y,W,H",
        help="a model package only: leave this rectangle of the frame (in the good images' pixels: left, top, "
        "width, height) out of the decision, e.g. a date code printed on each part; repeat for more. The "
        "threshold is calibrated through the mask, which the package keeps (drawn in TARGET/inspection.png). It "
        "replaces the package's mask: give the rectangles it had too (vqad info TARGET lists them). Where the "
        "highest good images crowd one place, a calibration names the flags that leave it out, and what they do",
    )
    c.add_argument(
        "--mask",
        type=Path,
        metavar="MASK_IMAGE",
        help="a model package only: the frame's inspection mask as an image of the frame's aspect, black where "
        "the frame is left out of the decision",
    )
    c.add_argument(
        "--inspect-all",
        action="store_true",
        help="a model package only: remove its inspection mask, and judge the whole frame again",
    )


def _add_embed(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("embed", help="extract codes, quantised latents or pooled vectors of images")
    e.add_argument("run", type=Path, metavar="RUN_DIR", help="a trained run (vqad train)")
    e.add_argument("images", type=Path, metavar="IMAGES", help="an image or a folder (searched recursively)")
    e.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FILE.npz",
        help="the npz to write (.npz is added to a name without it): the arrays and the images' paths",
    )
    e.add_argument(
        "--kind",
        choices=["codes", "quantized", "pooled"],
        default="pooled",
        help="the VQ codes, the quantised latents, or a vector per image (default)",
    )
    e.set_defaults(func=cmd_embed)
