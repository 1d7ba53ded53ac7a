"""Progress on long work (reading a folder of images, scoring a test set, drawing its
pictures): a tqdm bar on a terminal, once the work has taken DELAY_S; nothing in a log or a
pipe, where the command's closing line says what was done."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

# Work shorter than this shows no bar: a small folder reads without a flicker.
DELAY_S = 2.0


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "image") -> Iterator[T]:
    """`items`, with a bar on stderr when it is a terminal (tqdm's `disable=None`)."""
    yield from tqdm(items, desc=desc, total=total, unit=unit, disable=None, leave=False, delay=DELAY_S)
