"""`vqad score MODEL IMAGE_OR_FOLDER...`: what the line would decide on image files, without a
daemon, a camera or a socket (an audit of a disputed part, a check of a new package on known
good and bad parts before it goes live).

The images go through the daemon's own steps: the package's verified graph on the configured
backend (`edge.serving.load_serving`), the frame's resize (`edge.frames.to_model_input`), the
camera health gate, and the results' scoring, regions and decision (`edge.results.scored_results`).
A folder's repeated image is no frozen camera: the gate checks the images as stills, as `vqad
calibrate` does.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.durable import require_writable
from edge.errors import DataError
from edge.frames import IMAGE_KINDS, batched, find_images, is_image, read_image, write_image
from edge.inspection import InspectionMask
from edge.metrics import DaemonMetrics
from edge.overlay import map_peak, mark_peak, result_picture
from edge.progress import progress
from edge.protocol import file_name, unfit_reasons
from edge.results import Pending, Result, error_result, scored_results
from edge.serving import Serving, load_serving
from edge.settings import EdgeConfig

log = logging.getLogger(__name__)

CAMERA_ID = "offline"


@dataclasses.dataclass(frozen=True)
class Scored:
    """One image's verdict: its path, and the result header the daemon would publish (status
    "error" with the reason for an image that cannot be read)."""

    path: Path
    header: dict[str, Any]


def image_paths(sources: Sequence[str | Path]) -> list[Path]:
    """The image files named, and those under the folders named, in the order given."""
    paths: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            paths.extend(find_images(source))
        elif is_image(source):
            paths.append(source)
        elif not source.exists():  # a name mistyped, or a file not copied yet
            raise DataError(f"{source}: no such file or folder")
        else:
            raise DataError(f"{source}: neither an image file ({IMAGE_KINDS}) nor a folder")
    if not paths:
        raise DataError(f"no images under {', '.join(map(str, sources))}")
    return paths


def score_images(
    model_dir: Path, sources: Sequence[str | Path], cfg: EdgeConfig, out: Path | None = None, label: str = "scoring"
) -> Iterator[Scored]:
    """Score every image under `sources` as the line would with `cfg` (its threshold, backend,
    health limits); with `out`, draw each result (the map over the image at its own size, regions
    boxed, the peak ringed, labelled with the file's name) into out/<name>.png. Yields one Scored
    per image, in order; `label` names the progress bar."""
    paths = image_paths(sources)
    if out is not None:
        require_writable(out, out)  # a file there, or a read-only folder: said before the model loads
    cfg = dataclasses.replace(cfg, inference_workers=1, publish_frames=False, publish_maps=True, warmup_runs=1)
    serving = load_serving(model_dir, cfg, DaemonMetrics())
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    try:
        batches = batched(list(enumerate(paths)), cfg.max_batch)
        for batch in progress(batches, label, total=-(-len(paths) // cfg.max_batch), unit="batch"):
            yield from _score_batch(serving, batch, out)
    finally:
        serving.close()


def _score_batch(serving: Serving, batch: Sequence[tuple[int, Path]], out: Path | None) -> list[Scored]:
    """The batch's verdicts in its order: an unreadable image is an error result, as a
    malformed frame is on the line, and the others are scored together."""
    verdicts: dict[int, Scored] = {}
    pending: list[tuple[Path, Pending, np.ndarray | None]] = []
    for index, path in batch:
        try:
            ready, image = _pending(serving, index, path)
            pending.append((path, ready, image if out is not None else None))  # a batch of full frames: only to draw
        except DataError as exc:
            now = time.time_ns()
            error = error_result(CAMERA_ID, index, now, str(exc), now, serving.scoring, path.name[:128])
            verdicts[index] = Scored(path, error.header)
    if pending:
        start_mono_ns = time.monotonic_ns()
        maps, scores = serving.backends[0].infer(np.stack([p.model_input for _, p, _ in pending]))
        infer_ms = (time.monotonic_ns() - start_mono_ns) / 1e6
        results = scored_results([p for _, p, _ in pending], maps, scores, start_mono_ns, infer_ms, serving.scoring)
        for (path, p, image), result, amap in zip(pending, results, maps, strict=True):
            if out is not None and result.header["status"] == "ok":
                _draw(result, amap[0], image, path, out, serving.mask)
            verdicts[p.frame_id] = Scored(path, result.header)
    return [verdicts[index] for index, _ in batch]


def _pending(serving: Serving, index: int, path: Path) -> tuple[Pending, np.ndarray]:
    """An image file as the daemon's receiver makes a frame ready for inference, and the image
    as read."""
    fmt = serving.package.input_format
    image = read_image(path, fmt.pixel_bits)
    model_input = fmt.frame(image)
    health = None if serving.health is None else serving.health.check(CAMERA_ID, model_input, image.shape[:2], False)
    now, arrived = time.time_ns(), time.monotonic_ns()
    pending = Pending(CAMERA_ID, index, now, now, image.shape[:2], model_input, arrived, None, health, path.name[:128])
    return pending, image


def _draw(
    result: Result, amap: np.ndarray, image: np.ndarray, path: Path, out: Path, mask: InspectionMask | None
) -> None:
    """The map over the image at its own size, as the record's evidence draws a fail: a defect
    a few camera pixels wide is seen as the camera saw it, not at the model's size. The map's
    peak, where the score comes from, is ringed as in `vqad eval`'s pictures: on a pass near the
    threshold, the colour is faint and the ring shows where the model looked. What the package's
    inspection mask leaves out is hatched."""
    labelled = {**result.header, "camera_id": path.name}  # the label names the file
    keep = mask.keep if mask is not None else None
    picture = mark_peak(result_picture(labelled, amap, frame=image, keep=keep), map_peak(amap), amap.shape)
    write_image(out / f"{file_name(path.stem)}_{result.header['frame_id']}.png", picture)


def by_folder(scored: Sequence[Scored]) -> list[tuple[Path, list[Scored]]]:
    """The scored images grouped by the folder each lies in, in the order found: a folder of
    known good parts beside one of a defect kind (`vqad records --export-reviewed`'s layout, or
    a test set's) reads as the rejects and passes of each."""
    groups: dict[Path, list[Scored]] = {}
    for s in scored:
        groups.setdefault(s.path.parent, []).append(s)
    return list(groups.items())


def changes(scored: Sequence[Scored], against: Sequence[Scored]) -> str:
    """What the package of `scored` decides otherwise than the one of `against` (the same
    images, in the same order): '2 of 40 decisions change: 1 pass → fail, 1 fail → pass'. An
    image that either could not score is not counted."""
    pairs = [(s.header.get("decision"), a.header.get("decision")) for s, a in zip(scored, against, strict=True)]
    decided = [(new, old) for new, old in pairs if new and old]
    to_fail = sum(1 for new, old in decided if (old, new) == ("pass", "fail"))
    to_pass = sum(1 for new, old in decided if (old, new) == ("fail", "pass"))
    if not to_fail + to_pass:
        return f"no decision of {len(decided)} changes"
    return f"{to_fail + to_pass} of {len(decided)} decisions change: {to_fail} pass → fail, {to_pass} fail → pass"


def summary(scored: Sequence[Scored]) -> str:
    """'12 images: 9 pass, 3 fail (1 unfit), 0 not scored' (unreadable files)."""
    decisions = [s.header.get("decision") for s in scored]
    unfit = sum(1 for s in scored if unfit_reasons(s.header))
    errors = sum(1 for s in scored if s.header["status"] == "error")
    return (
        f"{len(scored)} images: {decisions.count('pass')} pass, {decisions.count('fail')} fail ({unfit} unfit), "
        f"{errors} not scored"
    )
