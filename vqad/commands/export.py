"""Export: `vqad export`, `vqad build-engine`, `vqad info`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from vqad.commands.common import at_least, default_config, overrides, set_arg

log = logging.getLogger("vqad")


def cmd_export(args: argparse.Namespace) -> int:
    from edge.config import load_config
    from export.config import ExportConfig
    from export.export_run import export_run

    cfg = load_config(ExportConfig, args.config or default_config("export"), overrides(args, "export"))
    meta = export_run(args.run, args.out, cfg, force=args.force, data=args.data)
    p = meta["parity"]
    a, b = p["fp32_vs_torch"], p["fp16_vs_fp32"]
    print(f"parity on {p['n_images']} images:")
    print(
        f"  FP32 ONNX vs PyTorch: map max abs {a['map_max_abs_error']:.2e}, score max abs "
        f"{a['score_max_abs_error']:.2e} (bound {a['bound_max_abs_error']:.2e} = "
        f"{a['bound_fraction_of_threshold']:g} x threshold), decisions identical: {a['decisions_identical']}"
    )
    if a.get("relaxed_images"):
        print(
            f"    {a['relaxed_images']} image(s) beyond that bound hold a latent cell whose two nearest codes "
            f"tie at FP32 precision: held to the FP16 bounds, map relative error "
            f"{a['relaxed_map_relative_error']:.2e}, score max abs {a['relaxed_score_max_abs_error']:.2e}"
        )
    print(
        f"  FP16 ONNX vs FP32:    map relative error {b['map_relative_error']:.2e} "
        f"(bound {b['bound_relative_error']:g}), "
        f"decision agreement {b['decision_agreement']:.3f} (bound {b['bound_decision_agreement']:g})"
    )
    print(f"wrote {args.out}/model.onnx, model_fp16.onnx, model.json (threshold {meta['threshold']['value']:.5g})")
    return 0


def engine_settings(args: argparse.Namespace) -> tuple[int, int]:
    """The engine's (max batch, workspace MiB): the flags, else the edge config's (--config,
    default configs/edge.yaml). `vqad serve` looks up the engine by the same two settings, so
    an engine built from the config it runs with is the one it finds."""
    from edge.config import load_config
    from edge.settings import EdgeConfig

    cfg = load_config(EdgeConfig, args.config or default_config("edge"), {})
    return args.max_batch or cfg.max_batch, args.workspace_mb or cfg.tensorrt_workspace_mb


def cmd_build_engine(args: argparse.Namespace) -> int:
    from export.engine import build_engine, verify_engine

    max_batch, workspace_mb = engine_settings(args)
    path = build_engine(args.model, max_batch=max_batch, workspace_mb=workspace_mb, force=args.force)
    figures = verify_engine(args.model, max_batch, workspace_mb)
    print(f"engine: {path}")
    print(
        f"checked against ONNX Runtime on {figures['n_frames']} frames: map relative error "
        f"{figures['map_relative_error']:.2e}, decision agreement {figures['decision_agreement']:.3f}"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """`vqad info MODEL_DIR`: the package's card (or its model.json); exit 4 when a graph is not
    the file it was exported with."""
    from edge.card import graph_states, package_card, served_lines
    from edge.config import load_config
    from edge.package import load_package
    from edge.serving import configured_threshold
    from edge.settings import EdgeConfig
    from edge.state import Overrides

    pkg = load_package(args.model)
    states = graph_states(pkg)  # each graph read whole once
    over = overrides(args, "edge")
    cfg = load_config(EdgeConfig, args.config, over) if args.config or over else None
    # The daemon's: --state-dir, else the config's edge.state_dir, else the package's folder.
    state_dir = args.state_dir or (cfg.state_folder(pkg.root) if cfg else pkg.root)
    configured = configured_threshold(pkg, cfg) if cfg else None  # None: edge.threshold unknown
    if args.format == "json":
        kept, starts_on = Overrides.load(state_dir), pkg.threshold if configured is None else configured
        served = {"state_dir": str(state_dir), "threshold": kept.threshold, "paused": kept.paused,
                  "configured_threshold": configured,
                  "threshold_applies": kept.applies(pkg.sha256, starts_on)}  # fmt: skip
        print(json.dumps({**pkg.meta, "graphs": states, "served": served}, indent=2))
    else:
        print("\n".join(package_card(pkg, states) + served_lines(pkg, state_dir, configured)))
    broken = [name for name, state in states.items() if state != "verified"]
    if broken:
        log.error("%s: %s not the file(s) it was exported with: export it again, or copy it whole", pkg.root,
                  ", ".join(broken))  # fmt: skip
        return 4
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    x = sub.add_parser("export", help="export a run to ONNX FP32 + FP16 and model.json, with a parity proof")
    x.add_argument("run", type=Path, metavar="RUN_DIR", help="a trained and evaluated run (vqad train, vqad eval)")
    x.add_argument("--out", type=Path, required=True, metavar="MODEL_DIR", help="the model package to write")
    x.add_argument("--config", type=Path, help="export config YAML (default configs/export.yaml)")
    set_arg(x, "export")
    x.add_argument("--force", action="store_true", help="replace an existing package in MODEL_DIR")
    x.add_argument(
        "--data",
        type=Path,
        metavar="DATA_CAT",
        help="the run's category folder where it is now, when it has moved since training (the parity proof "
        "reads its validation images)",
    )
    x.set_defaults(func=cmd_export)
    b = sub.add_parser("build-engine", help="build the TensorRT FP16 engine on this GPU (Jetson or any NVIDIA GPU)")
    b.add_argument(
        "model", type=Path, metavar="MODEL_DIR", help="a model package (vqad export); the engine is cached in it"
    )
    b.add_argument(
        "--config",
        type=Path,
        help="the edge config `vqad serve` runs with (default configs/edge.yaml): its max_batch and "
        "tensorrt_workspace_mb, unless the flags below say otherwise",
    )
    b.add_argument("--max-batch", type=at_least(1), help="the largest batch the engine takes (default: the config's)")
    b.add_argument("--workspace-mb", type=at_least(1), help="TensorRT's build workspace in MiB (default: the config's)")
    b.add_argument("--force", action="store_true", help="rebuild even if a valid cached engine exists")
    b.set_defaults(func=cmd_build_engine)
    i = sub.add_parser(
        "info", help="what a model package is: origin, input, graphs, threshold and its history, figures"
    )
    i.add_argument("model", type=Path, metavar="MODEL_DIR", help="a model package (vqad export)")
    i.add_argument("--format", choices=["table", "json"], default="table",
                   help="table: a line per subject; json: model.json, with each graph's check")  # fmt: skip
    i.add_argument("--state-dir", type=Path, metavar="DIR",
                   help="the daemon's state folder (edge.state_dir; default MODEL_DIR): the threshold set with vqad "
                   "ctl and the paused cameras it keeps over the package")  # fmt: skip
    i.add_argument("--config", type=Path, metavar="EDGE_YAML",
                   help="the edge config the daemon runs with: its edge.threshold, served instead of the package's, "
                   "and its edge.state_dir")  # fmt: skip
    set_arg(i, "edge")
    i.set_defaults(func=cmd_info)
