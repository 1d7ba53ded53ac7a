"""The model package: a folder with model.onnx, model_fp16.onnx, model.json and,
on a GPU target, engines/<key>.plan.

`model.json` describes the model fully: input size, channels and colour order,
normalisation, threshold and how it was calibrated, training metrics, the sha256 of
every ONNX file, opset and versions, and the parity figures measured at export. The
daemon trusts nothing it cannot verify: a file whose sha256 differs is refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.durable import replace_synced
from edge.errors import PackageError
from edge.frames import PIXEL_BITS, InputFormat, as_size, check_pixel_bits

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
FP32_FILE = "model.onnx"
FP16_FILE = "model_fp16.onnx"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelPackage:
    """model.json, parsed and checked. `root` is the package folder."""

    root: Path
    name: str
    version: str
    image_size: tuple[int, int]  # (height, width)
    channels: int
    color_order: str
    pixel_bits: int  # the bits of a 16-bit image the camera fills (edge.frames.to_uint8)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    threshold: float
    map_scale: float
    files: dict[str, str]
    meta: dict[str, Any] = field(repr=False)

    @property
    def input_format(self) -> InputFormat:
        """How an image becomes this model's input (edge.frames.InputFormat)."""
        return InputFormat(self.image_size, self.channels, self.pixel_bits)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one frame at the model input."""
        return (*self.image_size, self.channels)

    @property
    def created_ns(self) -> int | None:
        """When `vqad export` made the package (ns since the epoch, UTC), from model.json's
        `created`; None where it is missing or unreadable."""
        try:
            made = dt.datetime.fromisoformat(str(self.meta["created"]))
        except (KeyError, ValueError):
            return None
        return int(made.replace(tzinfo=made.tzinfo or dt.timezone.utc).timestamp() * 1e9)

    @property
    def sha256(self) -> str:
        """The FP32 graph's sha256: the model's identity in every result."""
        return self.files[FP32_FILE]

    def onnx_path(self, precision: str = "fp32") -> Path:
        """Path of the ONNX file for `precision` ('fp32' or 'fp16')."""
        if precision not in ("fp32", "fp16"):
            raise PackageError(f"unknown precision {precision!r}; use fp32 or fp16")
        return self.root / (FP32_FILE if precision == "fp32" else FP16_FILE)

    def verify(self, filename: str) -> Path:
        """Check that `filename` exists and matches the sha256 in model.json; return its path."""
        path = self.root / filename
        expected = self.files.get(filename)
        if expected is None:
            raise PackageError(f"{self.root / MODEL_JSON} lists no sha256 for {filename}")
        if not path.is_file():
            raise PackageError(f"model file missing: {path}")
        actual = sha256_file(path)
        if actual != expected:
            raise PackageError(
                f"model file {path} is corrupt: sha256 {actual[:16]}… does not match model.json {expected[:16]}…"
            )
        return path


def _get(meta: dict[str, Any], *keys: str) -> Any:
    node: Any = meta
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            raise PackageError(f"model.json lacks {'.'.join(keys)}")
        node = node[key]
    return node


def newer_vqad_hint(version: object, newest: int, or_else: str = "") -> str:
    """The remedy, when a file's format `version` is newer than the `newest` this vqad reads: a
    package or checkpoint made by a newer vqad (a box not upgraded with the training machine)."""
    if isinstance(version, int) and not isinstance(version, bool) and version > newest:
        return "; a newer vqad made it: upgrade vqad here" + (f", or {or_else}" if or_else else "")
    return ""


def load_package(root: str | Path) -> ModelPackage:
    """Read and check `root/model.json`. Raises PackageError with the reason."""
    root = Path(root)
    path = root / MODEL_JSON
    if not root.is_dir():
        raise PackageError(f"model package folder not found: {root}")
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as exc:
        if (root / "checkpoint.pt").is_file():  # a training run's folder (train.checkpoint)
            raise PackageError(
                f"{root} is a training run, not a model package: export it first (vqad export {root} --out MODEL_DIR)"
            ) from exc
        raise PackageError(f"no {MODEL_JSON} in {root}: is this an exported model? (vqad export)") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackageError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise PackageError(f"{path} must hold a JSON object")
    if (version := meta.get("format_version")) != FORMAT_VERSION:
        hint = newer_vqad_hint(version, FORMAT_VERSION, "export it with this one")
        raise PackageError(f"{path}: format_version {version!r}, expected {FORMAT_VERSION}{hint}")
    try:
        pkg = ModelPackage(
            root=root,
            name=str(_get(meta, "name")),
            version=str(_get(meta, "version")),
            image_size=as_size(_get(meta, "input", "size")),  # N (square), or [H, W]
            channels=int(_get(meta, "input", "channels")),
            color_order=str(_get(meta, "input", "color_order")),
            # A package exported before the field read 16-bit images by their top 8 of 16 bits.
            pixel_bits=check_pixel_bits(meta["input"].get("pixel_bits", PIXEL_BITS), "input.pixel_bits"),
            mean=tuple(float(v) for v in _get(meta, "normalization", "mean")),
            std=tuple(float(v) for v in _get(meta, "normalization", "std")),
            threshold=float(_get(meta, "threshold", "value")),
            map_scale=float(_get(meta, "output", "map_scale")),
            files={str(k): str(v) for k, v in _get(meta, "files").items()},
            meta=meta,
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise PackageError(f"{path} has a malformed field: {exc}") from exc
    if not (0 < pkg.threshold < math.inf and 0 < pkg.map_scale < math.inf):
        raise PackageError(f"{path}: threshold {pkg.threshold} and map_scale {pkg.map_scale} must be finite and > 0")
    if pkg.channels not in (1, 3) or min(pkg.image_size) < 8:
        raise PackageError(f"{path}: unsupported input {pkg.image_size} x {pkg.channels} channels")
    if FP32_FILE not in pkg.files:
        raise PackageError(f"{path} lists no sha256 for {FP32_FILE}")
    return pkg


def write_model_json(root: str | Path, meta: dict[str, Any]) -> Path:
    """Write model.json whole or not at all, as the disk keeps it through a power cut (a
    calibration on the line's box, then the line switched off)."""
    path = Path(root) / MODEL_JSON
    replace_synced(path, (json.dumps(meta, indent=2, sort_keys=False) + "\n").encode())
    return path
