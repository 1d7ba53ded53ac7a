"""The interface every scoring term keeps, and the good images terms are calibrated on.

A term turns (input, reconstruction, head probability) into an anomaly map (N, 1, H, W). Its
behaviour is fixed by a frozen plan: `calibrate` fits the term on good images and returns the
plan it will score by; a term built from a saved plan and loaded with its saved tensors scores
exactly as the one that was calibrated. Nothing flips a buffer to change what a method does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from edge.frames import batched


@dataclass(frozen=True)
class GoodImages:
    """Good images a term is calibrated on, all float [0,1] (B, C, H, W).

    train: a function returning a fresh iterable of training batches each call (terms may read
    them several times; a large set need not sit in memory as floats). val: the validation
    images and their reconstructions, (M, C, H, W) each, and the head's probability on them.
    features: the features of a batch that the memory term compares. outputs: the
    reconstruction, head probability, features and encoder latents of a batch (what the scorer
    takes; scoring by peers needs them).
    """

    train: Callable[[], Iterable[torch.Tensor]]
    val: torch.Tensor
    val_recon: torch.Tensor
    val_head: torch.Tensor | None = None  # the head's probability on val, (M, 1, H, W)
    features: Callable[[torch.Tensor], torch.Tensor] | None = None  # x01 -> the features memory compares
    # x01 -> (reconstruction, head probability, features, latents): what scoring a batch needs
    outputs: Callable[[torch.Tensor], tuple[Any, ...]] | None = None

    def val_batches(self, size: int = 32) -> list[torch.Tensor]:
        return list(batched(self.val, size))


@dataclass(frozen=True)
class TermInputs:
    """What one scorer call hands each of its terms.

    x, recon: (N, C, H, W) [0,1] input and reconstruction; head_prob: (N, 1, H, W) the head's
    probability, or None; features: (N, D, h, w) the head's coarsest features, or None;
    shared: what the terms of the same call computed on these inputs, for a fused map's term to
    take instead of computing it again (`computed_once`), or None.
    """

    x: torch.Tensor
    recon: torch.Tensor
    head_prob: torch.Tensor | None = None
    features: torch.Tensor | None = None
    shared: dict[Hashable, torch.Tensor] | None = None


class Term(nn.Module):
    """One additive part of the anomaly map.

    Subclasses set `name`, a frozen `Plan` dataclass (JSON-able fields), and implement
    `calibrate`, `forward` and `describe`. `plan` is the one the term scores by.
    """

    name: ClassVar[str]
    Plan: ClassVar[type]
    needs_head: ClassVar[bool] = False
    needs_features: ClassVar[bool] = False

    def __init__(self, plan: Any):
        super().__init__()
        self.plan = plan

    def calibrate(self, good: GoodImages) -> Any:
        """Fit on good images; return (and adopt) the plan the term then scores by."""
        raise NotImplementedError

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        """The term's map (N, 1, H, W) float32 of one scorer call's inputs, in the unit
        `describe()` names."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What model.json says of the term: its plan and the unit of its map."""
        return {"plan": plan_to_dict(self.plan)}


def computed_once(
    shared: dict[Hashable, torch.Tensor] | None, key: Hashable, compute: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """compute(), or what an earlier term of the same scorer call computed under `key`: a key
    names everything the result depends on besides the call's inputs. shared None: computed."""
    if shared is None:
        return compute()
    if key not in shared:
        shared[key] = compute()
    return shared[key]


def peak_quantile(maps: Iterable[torch.Tensor], roi: torch.Tensor, q: float = 0.99) -> float:
    """The q-quantile, over images, of each (B, 1, H, W) map's peak inside the region of
    interest: what "1" of a term's map means on the good validation images."""
    peaks = torch.cat([(m * roi).flatten(1).amax(dim=1) for m in maps])  # (M,)
    return float(torch.quantile(peaks, q))


def plan_to_dict(plan: Any) -> dict[str, Any]:
    """A plan as plain JSON values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(plan).items()}


def plan_from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """The plan `cls` from saved values; unknown keys are a ValueError naming `where`."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown plan keys {unknown}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
