"""Sub-commands beyond synth/train/eval. Registered here to keep cli.py short."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(sub: argparse._SubParsersAction) -> None:
    x = sub.add_parser("export", help="export a run to ONNX FP32 + FP16 and model.json, with a parity proof")
    x.add_argument("run", type=Path, metavar="RUN_DIR")
    x.add_argument("--out", type=Path, required=True, metavar="MODEL_DIR")
    x.add_argument("--config", type=Path, help="export config YAML (default configs/export.yaml)")
    x.add_argument("--set", action="append", metavar="export.KEY=VALUE")
    x.add_argument("--force", action="store_true", help="replace an existing package in MODEL_DIR")
    x.set_defaults(func=cmd_export)
    add_engine_command(sub)
    add_edge_commands(sub)
    add_demo_command(sub)
    add_embed_command(sub)


def cmd_export(args: argparse.Namespace) -> int:
    from edge.config import load_config
    from export.config import ExportConfig
    from export.export_run import export_run
    from vqad.cli import _overrides, default_config

    cfg = load_config(ExportConfig, args.config or default_config("export"), _overrides(args, "export"))
    meta = export_run(args.run, args.out, cfg, force=args.force)
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


def cmd_serve(args: argparse.Namespace) -> int:
    from edge.config import load_config
    from edge.daemon import Daemon
    from edge.settings import EdgeConfig
    from vqad.cli import _overrides, default_config

    over = _overrides(args, "edge")
    for flag, key in (
        ("backend", "backend"),
        ("frames", "frames_endpoint"),
        ("results", "results_endpoint"),
        ("max_batch", "max_batch"),
        ("max_delay_ms", "max_delay_ms"),
        ("threshold", "threshold"),
        ("metrics_port", "metrics_port"),
        ("precision", "precision"),
        ("overload", "overload"),
    ):
        value = getattr(args, flag)
        if value is not None:
            over[key] = value
    cfg = load_config(EdgeConfig, args.config or default_config("edge"), over)
    return Daemon(args.model, cfg, ready_file=args.ready_file).serve()


def cmd_camera(args: argparse.Namespace) -> int:
    import signal

    from edge.camera import run_camera

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    try:
        sent = run_camera(
            args.source,
            args.to,
            fps=args.fps,
            camera_id=args.camera_id,
            encoding=args.encoding,
            loop=args.loop,
            count=args.count,
            manifest=args.manifest,
            start_id=args.start_id,
            curve_secret=args.curve_secret,
            curve_server_key=args.curve_server_key,
            stop=lambda: bool(stopping),
            sndhwm=args.hwm,
            linger_s=args.linger_s,
        )
    except KeyboardInterrupt:
        return 130
    print(f"sent {sent} frames")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    import json
    import signal

    from edge.watch import run_watch

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    summary = run_watch(
        args.endpoint,
        camera=args.camera,
        save_dir=args.save_dir,
        count=args.count,
        timeout_s=args.timeout,
        jsonl=args.jsonl,
        quiet=args.quiet,
        stop=lambda: bool(stopping),
        curve_secret=args.curve_secret,
        curve_server_key=args.curve_server_key,
    )
    print("summary: " + summary.text())
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary.as_dict(), indent=2))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from edge.security import create_keys

    public, secret = create_keys(args.dir, args.name)
    print(f"public key: {public}\nsecret key: {secret} (keep it private)")
    return 0


def add_edge_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="run the inspection daemon (ZeroMQ frames in, results out)")
    s.add_argument("model", type=Path, metavar="MODEL_DIR")
    s.add_argument("--config", type=Path, help="edge config YAML (default configs/edge.yaml)")
    s.add_argument("--backend", help="onnxruntime | tensorrt (or module:Class)")
    s.add_argument("--precision", choices=["fp32", "fp16"], help="onnxruntime graph to run")
    s.add_argument("--frames", metavar="ENDPOINT", help="where to bind the PULL socket")
    s.add_argument("--results", metavar="ENDPOINT", help="where to bind the PUB socket")
    s.add_argument("--max-batch", type=int)
    s.add_argument("--max-delay-ms", type=float)
    s.add_argument("--threshold", type=float, help="override model.json's threshold")
    s.add_argument("--overload", choices=["backpressure", "drop_oldest"])
    s.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    s.add_argument("--ready-file", type=Path, help="write this file once warmed up and serving")
    s.add_argument("--set", action="append", metavar="edge.KEY=VALUE")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("camera", help="send frames from a folder, video file, or device to the daemon")
    c.add_argument("source", help="folder of images, image or video file, device index, or URL")
    c.add_argument("--to", required=True, metavar="ENDPOINT")
    c.add_argument("--fps", type=float, default=0.0, help="frames per second (0 = as fast as accepted)")
    c.add_argument("--camera-id", default="cam0")
    c.add_argument("--encoding", choices=["raw", "jpeg", "png"], default="raw")
    c.add_argument("--loop", action="store_true")
    c.add_argument("--count", type=int, default=0, help="stop after this many frames (0 = no limit)")
    c.add_argument("--start-id", type=int, default=0, help="first frame_id")
    c.add_argument("--manifest", type=Path, help="write camera_id,frame_id,source CSV")
    c.add_argument("--curve-secret", help="this client's .key_secret (CURVE)")
    c.add_argument("--curve-server-key", help="the daemon's public .key (CURVE)")
    c.add_argument(
        "--hwm",
        type=int,
        default=4,
        help="frames that may wait in this process for the daemon (ZeroMQ SNDHWM; default 4)",
    )
    c.add_argument(
        "--linger-s",
        type=float,
        default=30.0,
        help="on exit, wait this long for queued frames to reach the daemon (default 30; at most 3 after SIGTERM)",
    )
    c.set_defaults(func=cmd_camera)

    w = sub.add_parser("watch", help="print results; save overlays of failed frames")
    w.add_argument("endpoint", metavar="ENDPOINT")
    w.add_argument("--camera", metavar="ID")
    w.add_argument("--save-dir", type=Path)
    w.add_argument("--count", type=int, default=0, help="exit after this many results")
    w.add_argument("--timeout", type=float, default=0.0, help="exit after this many idle seconds")
    w.add_argument("--jsonl", type=Path, help="append every result header to this file")
    w.add_argument("--summary-json", type=Path, help="write the summary here on exit")
    w.add_argument("--quiet", action="store_true", help="no line per result")
    w.add_argument("--curve-secret")
    w.add_argument("--curve-server-key")
    w.set_defaults(func=cmd_watch)

    k = sub.add_parser("keys", help="create a CURVE key pair (DIR/NAME.key, DIR/NAME.key_secret)")
    k.add_argument("dir", type=Path)
    k.add_argument("--name", default="server")
    k.set_defaults(func=cmd_keys)


def cmd_build_engine(args: argparse.Namespace) -> int:
    from export.engine import build_engine, verify_engine

    path = build_engine(args.model, max_batch=args.max_batch, workspace_mb=args.workspace_mb, force=args.force)
    figures = verify_engine(args.model, args.max_batch, args.workspace_mb)
    print(f"engine: {path}")
    print(
        f"checked against ONNX Runtime on {figures['n_frames']} frames: map relative error "
        f"{figures['map_relative_error']:.2e}, decision agreement {figures['decision_agreement']:.3f}"
    )
    return 0


def add_engine_command(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("build-engine", help="build the TensorRT FP16 engine on this GPU (Jetson or any NVIDIA GPU)")
    b.add_argument("model", type=Path, metavar="MODEL_DIR")
    b.add_argument("--max-batch", type=int, default=8)
    b.add_argument("--workspace-mb", type=int, default=1024)
    b.add_argument("--force", action="store_true", help="rebuild even if a valid cached engine exists")
    b.set_defaults(func=cmd_build_engine)


def add_demo_command(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from vqad.demo import main_demo

        return main_demo(args)

    d = sub.add_parser("demo", help="synth -> train -> eval -> export -> serve -> camera -> watch, end to end")
    d.add_argument("--workdir", default="demo")
    d.add_argument("--category", default="bracket", choices=["bracket", "weave"])
    d.add_argument("--minutes", type=float, default=3.0, help="training budget")
    d.add_argument("--image-size", type=int, default=128)
    d.set_defaults(func=run)


def add_embed_command(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from train.embed import write_embeddings

        result = write_embeddings(args.run, args.images, args.out, args.kind)
        print(f"wrote {args.out}: {args.kind} {result[args.kind].shape} for {len(result['paths'])} images")
        return 0

    e = sub.add_parser("embed", help="extract codes, quantised latents or pooled vectors of images")
    e.add_argument("run", type=Path, metavar="RUN_DIR")
    e.add_argument("images", type=Path, metavar="IMAGES", help="an image or a folder (searched recursively)")
    e.add_argument("--out", type=Path, required=True, metavar="FILE.npz")
    e.add_argument("--kind", choices=["codes", "quantized", "pooled"], default="pooled")
    e.set_defaults(func=run)
