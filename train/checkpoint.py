"""Self-describing checkpoints: weights, full config, scoring plan, step, metrics and a content hash.

Saved with torch.save and loaded only with `weights_only=True`, which refuses any
pickled object that is not a tensor or a plain container: a malicious pickle cannot
run code here. Metadata travels as a JSON string. Writes are atomic (temp + rename),
so an interrupted save never leaves a half-written checkpoint behind. Older versions are
upgraded on load by train/migrate.py; the content hash is that of the weights as saved.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import torch

from edge.durable import replace_synced
from edge.errors import CheckpointError
from train.migrate import VERSION, upgrade

FORMAT = "vqad-checkpoint"
CHECKPOINT_NAME = "checkpoint.pt"


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a state dict, in key order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.reshape(-1)  # a 0-d tensor cannot be viewed as bytes
        digest.update(flat.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(
    path: str | Path,
    model_state: dict[str, torch.Tensor],
    meta: dict[str, Any],
    optimizer_state: dict[str, Any] | None = None,
) -> str:
    """Write a checkpoint whole or not at all, through a power cut too (edge.durable: a resume
    after the cut finds the last checkpoint or the one before); returns the weights' content hash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model_state.items()}
    digest = state_hash(state)
    meta = dict(meta, content_sha256=digest)
    payload = {"format": FORMAT, "version": VERSION, "meta_json": json.dumps(meta), "model": state}
    if optimizer_state is not None:
        payload["optimizer"] = optimizer_state
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    replace_synced(path, buffer.getvalue())
    return digest


def _why_unloadable(path: Path, exc: Exception) -> str:
    """Why torch.load refused `path`: a file cut short or damaged (torch.save writes a zip
    archive, and its directory at the end is missing: a copy that stopped early, a disk fault),
    or content other than weights, which vqad never unpickles."""
    if not zipfile.is_zipfile(path):
        return (f"the file is damaged or cut short ({path.stat().st_size:,} bytes, not a whole checkpoint: a copy "
                "that stopped early?)")  # fmt: skip
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"not a safe vqad checkpoint ({first[:200]})"


def load_checkpoint(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """-> {'model': state_dict, 'meta': dict, 'optimizer': dict | None}. CheckpointError on anything odd."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"refused to load {path}: {_why_unloadable(path, exc)}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a vqad checkpoint")
    try:
        meta = json.loads(payload["meta_json"])
        state = payload["model"]
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is a damaged checkpoint: {exc}") from exc
    if verify and state_hash(state) != meta.get("content_sha256"):
        raise CheckpointError(f"{path} is corrupt: its weights do not match their recorded hash")
    try:
        current = upgrade({"version": payload.get("version"), "meta": meta, "model": state})
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    return {"model": current["model"], "meta": current["meta"], "optimizer": payload.get("optimizer")}
