"""`vqad embed`: the learned representation of images, for downstream models.

kinds:
- `codes`:     (M, h, w) int32 code indices;
- `quantized`: (M, D, h, w) float32 quantised latents;
- `pooled`:    (M, K + 2D) float32: the normalised code-usage histogram (K), then the mean and
               the standard deviation of the quantised latent over the grid (D each).
The npz also holds `paths` (the images, in the sorted order used) and `kind`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from edge.durable import replace_synced
from edge.errors import DataError
from edge.frames import IMAGE_KINDS, batched, find_images
from edge.progress import progress
from train.data import load_images
from train.run import load_run

KINDS = ("codes", "quantized", "pooled")


def image_paths(source: str | Path) -> list[Path]:
    """An image file, or every image under a folder (recursively), in sorted order."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise DataError(f"no such image or folder: {source}")
    paths = find_images(source)
    if not paths:
        raise DataError(f"no images ({IMAGE_KINDS}) under {source}")
    return paths


@torch.no_grad()
def embed(run_dir: str | Path, source: str | Path, kind: str = "pooled", batch_size: int = 16) -> dict[str, np.ndarray]:
    if kind not in KINDS:
        raise DataError(f"unknown embedding kind {kind!r}; choose one of {', '.join(KINDS)}")
    run = load_run(run_dir)
    cfg = run.model_cfg
    paths = image_paths(source)
    images = load_images(paths, cfg.input_format)
    K = cfg.codebook_size
    chunks = []
    for batch in progress(batched(images, batch_size), "embedding", total=-(-len(images) // batch_size), unit="batch"):
        z_q, codes = run.model.encode_frames(torch.from_numpy(batch))  # (B,D,h,w), (B,h,w)
        if kind == "codes":
            chunks.append(codes.numpy().astype(np.int32))
        elif kind == "quantized":
            chunks.append(z_q.numpy().astype(np.float32))
        else:
            flat_codes = codes.flatten(1)  # (B, h*w)
            hist = torch.zeros(flat_codes.shape[0], K).scatter_add_(
                1, flat_codes, torch.ones_like(flat_codes, dtype=torch.float32)
            )
            hist = hist / flat_codes.shape[1]  # (B, K), sums to 1
            z = z_q.flatten(2)  # (B, D, h*w)
            chunks.append(torch.cat([hist, z.mean(2), z.std(2)], dim=1).numpy().astype(np.float32))
    return {kind: np.concatenate(chunks), "paths": np.array([str(p) for p in paths]), "kind": np.array(kind)}


def npz_path(out: str | Path) -> Path:
    """The file `--out` names, as numpy names it: `.npz` added unless it ends so."""
    out = Path(out)
    return out if out.suffix == ".npz" else out.with_name(out.name + ".npz")


def write_embeddings(run_dir: str | Path, source: str | Path, out: Path, kind: str) -> dict[str, np.ndarray]:
    """Embed the images and write the npz at `out` whole or not at all (a run stopped while it
    writes leaves the file it replaces)."""
    result = embed(run_dir, source, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **result)
    replace_synced(out, buffer.getvalue())
    return result
