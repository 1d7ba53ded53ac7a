"""Image decoding and resizing to the model input: written once, used by training,
evaluation, export checks and the daemon, so the pixels the model sees on the line are
the pixels it saw in evaluation.
"""

from __future__ import annotations

import logging
import math
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from edge.durable import write_synced
from edge.errors import DataError, FrameError
from edge.progress import progress

log = logging.getLogger(__name__)

T = TypeVar("T")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGE_KINDS = ", ".join(suffix[1:] for suffix in IMAGE_SUFFIXES)  # for messages that find none
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The largest frame the daemon takes by default (edge.max_frame_pixels), and the largest model
# input: a model twice as large on each side already needs gigabytes a frame on a Jetson.
DEFAULT_MAX_FRAME_PIXELS = 4096 * 4096


# A 16-bit image holds a camera's counts in its low `pixel_bits` bits: 16 for Mono16, 12 for
# Mono12 (values 0..4095), 10 or 14 for others. Read by its top 8 of those bits, a Mono12 frame
# read as Mono16 keeps only its top 4 (values 0..15) and is nearly black.
PIXEL_BITS = 16
PIXEL_BITS_RANGE = (8, 16)
# A 16-bit image whose every pixel is below this, read as 16 bits, holds a 12-bit (or fewer)
# camera's counts: said once, with the setting that reads it.
LOW_BITS_LIMIT = 1 << 12
_warned_low_bits = False
_warned_above_bits = False


def check_pixel_bits(bits: object, name: str = "pixel_bits") -> int:
    """`bits` as the significant bits of a 16-bit pixel; ValueError names `name` otherwise."""
    low, high = PIXEL_BITS_RANGE
    if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high} (12 for a Mono12 camera), got {bits!r}")
    return bits


def to_uint8(image: np.ndarray, pixel_bits: int = PIXEL_BITS) -> np.ndarray:
    """Scale 16-bit or float images to uint8; leave uint8 alone. A 16-bit image is read by the
    top 8 of its low `pixel_bits` bits, the same for every frame, so a scale never varies with
    the content; a count above 2**pixel_bits - 1 (a camera that fills more bits than it was
    said to) saturates at 255."""
    if image.dtype == np.uint8:
        return image
    if image.dtype.kind == "u" and image.dtype.itemsize == 2:
        _warn_if_bits_misfit(image, pixel_bits)
        shifted = image >> (pixel_bits - 8)
        return (shifted if pixel_bits == 16 else np.minimum(shifted, 255)).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    raise FrameError(f"unsupported pixel type {image.dtype}")


def _warn_if_bits_misfit(image: np.ndarray, pixel_bits: int) -> None:
    """Say once when 16-bit counts do not fit the bits they are read by: all low (a 12-bit
    camera read as 16 bits), or some above them (a 16-bit camera read as fewer)."""
    global _warned_low_bits, _warned_above_bits
    if _warned_low_bits and _warned_above_bits:
        return
    peak = int(image.max())
    if pixel_bits == 16 and not _warned_low_bits and 0 < peak < LOW_BITS_LIMIT:
        _warned_low_bits = True
        log.warning(
            "a 16-bit image uses 12 bits or fewer (max %d of 65535): read by its top 8 of 16 bits it is "
            "nearly black; say how many bits the camera fills (model.pixel_bits for images on disk and "
            'the frames that do not say, a frame\'s "pixel_bits", vqad camera --pixel-bits)',
            peak,
        )
    elif peak >> pixel_bits and not _warned_above_bits:
        _warned_above_bits = True
        log.warning(
            "a 16-bit image holds counts up to %d, above the %d bits it is read by: they saturate at "
            "white; the camera fills more bits than pixel_bits says",
            peak,
            pixel_bits,
        )


# JPEG start-of-frame markers (they carry the size): C0-CF but DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def encoded_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(height, width) that a PNG or JPEG file says it holds, read from its header without
    decoding it; None when the header does not say (another format, or damaged). A file of a
    few hundred kB may claim a gigapixel: the daemon refuses it before allocating one."""
    head = bytes(data[:32])
    if head.startswith(PNG_SIGNATURE) and head[12:16] == b"IHDR":
        return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    return None


# The first bytes of the encodings a frame's file may travel in, as it is.
SIGNATURES = {"jpeg": b"\xff\xd8", "png": PNG_SIGNATURE}


def stated_size(data: bytes | memoryview, encoding: str) -> tuple[int, int] | None:
    """(height, width) that JPEG or PNG bytes state, when they are of `encoding`; else None."""
    signature = SIGNATURES.get(encoding)
    return encoded_size(data) if signature is not None and bytes(data[: len(signature)]) == signature else None


def jpeg_whole(data: bytes | memoryview) -> bool:
    """Whether JPEG bytes end with their end-of-image marker (FF D9; zero bytes a camera pads
    with aside). A file cut short (still being copied) does not: it would reach the daemon only
    to be refused there. A JPEG has no checksum: damage inside its data is found by decoding."""
    return bytes(data[-64:]).rstrip(b"\0").endswith(b"\xff\xd9")


def png_bit_depth(data: bytes | memoryview) -> int | None:
    """The bits per sample a PNG's IHDR states (1, 2, 4, 8 or 16); None for another format."""
    head = bytes(data[:25])
    if len(head) == 25 and head.startswith(PNG_SIGNATURE) and head[12:16] == b"IHDR":
        return head[24]
    return None


def _jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """Walk the JPEG's marker segments to its start-of-frame; None if it is not reached."""
    pos, end = 2, len(data)
    while pos + 9 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker in _JPEG_SOF:
            return (data[pos + 5] << 8) | data[pos + 6], (data[pos + 7] << 8) | data[pos + 8]
        if length < 2:
            return None
        pos += 2 + length
    return None


def png_damage(data: bytes | memoryview) -> str | None:
    """What is wrong with a PNG's chunks (one cut short, one whose CRC does not match its bytes,
    no IEND), or None when each is whole. libpng writes a line to the process's stderr for each
    damaged PNG it is given ("libpng error: IDAT: CRC error"), past the daemon's logging and its
    line a minute: a sender of damaged PNGs would fill the journal at line rate. The CRCs cost
    about a millisecond a megabyte; they also say what happened to the bytes."""
    view, pos = memoryview(data), len(PNG_SIGNATURE)
    while pos + 8 <= len(view):
        length, kind = int.from_bytes(view[pos : pos + 4], "big"), bytes(view[pos + 4 : pos + 8])
        name = kind.decode("latin-1")
        end = pos + 12 + length
        if end > len(view):
            return f"the PNG is cut short inside its {name!r} chunk ({len(view)} of at least {end} bytes)"
        if zlib.crc32(view[pos + 4 : end - 4]) != int.from_bytes(view[end - 4 : end], "big"):
            return f"the PNG's {name!r} chunk fails its CRC: its bytes changed after it was encoded"
        if kind == b"IEND":
            return None
        pos = end
    return f"the PNG is cut short: no IEND chunk in its {len(view)} bytes"


def decode_image(data: bytes, pixel_bits: int | None = PIXEL_BITS) -> np.ndarray:
    """Decode PNG/JPEG/BMP/TIFF bytes to an HxW (grey) or HxWxC (BGR/BGRA) uint8 array; a
    16-bit image by its low `pixel_bits` bits (to_uint8), or with its counts as they are (None).

    Raises FrameError when the bytes are not a decodable image.
    """
    if not data:
        raise FrameError("empty image data")
    if bytes(data[:8]) == PNG_SIGNATURE and (damage := png_damage(data)) is not None:
        raise FrameError(damage)
    buf = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        cut = bytes(data[:2]) == SIGNATURES["jpeg"] and not jpeg_whole(data)
        raise FrameError("the JPEG is cut short: no end-of-image marker" if cut else "image data could not be decoded")
    return image if pixel_bits is None else to_uint8(image, pixel_bits)


def image_bytes(path: str | Path) -> bytes:
    """An image file's bytes. Raises DataError naming the file when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror or exc}") from exc


def read_image(path: str | Path, pixel_bits: int = PIXEL_BITS, data: bytes | None = None) -> np.ndarray:
    """Read an image file (decode_image); `data`: its bytes, when already read. Raises DataError
    naming the file when it is unreadable."""
    data = image_bytes(path) if data is None else data
    try:
        return decode_image(data, pixel_bits)
    except FrameError as exc:
        raise DataError(f"unreadable image {path}: {exc.reason}") from exc


def write_image(path: str | Path, image: np.ndarray, synced: bool = False) -> None:
    """Encode `image` by `path`'s suffix and write it. OSError when it cannot be encoded, or
    written: as the system says (a full disk: "No space left on device"), naming the file, with
    no part of it left. `synced`: wait until the file is on the disk (fsync), for a file that a
    database row will name (edge.durable). Encoded in memory: cv2.imwrite only answers False to
    a full disk, with libpng's "Write Error" on the process's stderr."""
    ok, encoded = cv2.imencode(Path(path).suffix, image)
    if not ok:
        raise OSError(f"cannot encode {path}")
    write_synced(path, encoded.tobytes(), sync=synced)


def one_channel_if_grey(image: np.ndarray) -> np.ndarray:
    """A BGR image whose three channels are equal (a mono camera's frame sent as colour) as its
    one grey channel, for a lossless file: OpenCV reads it back as the same BGR image, and its
    PNG is about a third of the size (1280 x 1024 with sensor noise: 0.6 MB against 1.7 MB)."""
    if image.ndim == 3 and image.shape[2] == 3:
        first = image[..., 0]
        if np.array_equal(first, image[..., 1]) and np.array_equal(first, image[..., 2]):
            return first
    return image


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Return an HxWxC uint8 image with C = `channels` (1: grey, 3: BGR). Alpha is dropped."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise FrameError(f"unsupported image shape {tuple(image.shape)}")
    c = image.shape[2]
    if c == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        c = 3
    if c == channels:
        return image
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, None]
    if channels == 3:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    raise FrameError(f"unsupported channel count {channels}")


Size = tuple[int, int]  # (height, width) of the model's input


def as_size(size: int | Sequence[int]) -> Size:
    """128 -> (128, 128); (H, W) or [H, W] -> (H, W)."""
    if isinstance(size, int):
        return (size, size)
    if len(size) == 1:
        return (int(size[0]), int(size[0]))
    if len(size) != 2:
        raise ValueError(f"an image size is N or (height, width), got {size!r}")
    return (int(size[0]), int(size[1]))


@dataclass(frozen=True)
class InputFormat:
    """How an image becomes the model's input: its (H, W) (N -> (N, N)), its channels (1 grey,
    3 BGR), and the bits of a 16-bit image that the camera fills (to_uint8). A training config
    and a model package each give theirs (`input_format`), and every reader of images takes it
    whole, so that one the model reads differently cannot be passed in part."""

    size: Size
    channels: int
    pixel_bits: int = PIXEL_BITS

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", as_size(self.size))

    def frame(self, image: np.ndarray) -> np.ndarray:
        """A decoded image (already 8-bit) -> the model's uint8 HxWxC input."""
        return to_model_input(image, self.size, self.channels)


def parse_size(text: str) -> Size:
    """ "128" -> (128, 128); "128x320" (height x width) -> (128, 320). ValueError otherwise."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"an image size is N or HxW (e.g. 128 or 128x320), got {text!r}") from None
    if len(values) not in (1, 2) or min(values) < 1:
        raise ValueError(f"an image size is N or HxW (e.g. 128 or 128x320), got {text!r}")
    return as_size(values)


def resize_to(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Resize HxWxC to the model's (height, width). INTER_AREA when shrinking (no aliasing),
    linear otherwise."""
    h, w = image.shape[:2]
    height, width = as_size(size)
    if (h, w) == (height, width):
        return image
    interp = cv2.INTER_AREA if (h >= height and w >= width) else cv2.INTER_LINEAR
    out = cv2.resize(image, (width, height), interpolation=interp)
    if out.ndim == 2:
        out = out[:, :, None]
    return out


def to_model_input(image: np.ndarray, size: int | Sequence[int], channels: int) -> np.ndarray:
    """Any decoded frame -> the model's uint8 HxWxC input (C-contiguous), as in training."""
    return np.ascontiguousarray(resize_to(to_channels(image, channels), size))


def load_images(
    paths: Sequence[Path],
    fmt: InputFormat,
    shapes: list[tuple[int, int]] | None = None,
    greys: list[bool] | None = None,
) -> np.ndarray:
    """Read every image into the model's input `fmt` -> (M, H, W, C) uint8, with progress on a
    terminal; each image's (H, W) as read is appended to `shapes` when given, and whether it is
    grey (one channel, or three equal ones) to `greys`; a 16-bit image is read by the low
    `fmt.pixel_bits` bits its camera fills.
    DataError, after reading them all, names the files that cannot be read: a folder with
    several is mended in one go, not one file per try. DataError before reading any when the
    images at `fmt`'s size need more memory than the machine has free (the kernel would kill the
    process, without a word, once the array had filled it)."""
    require_memory(len(paths) * math.prod(fmt.size) * fmt.channels, f"{len(paths)} images at {size_words(fmt.size)}")
    out = np.empty((len(paths), *fmt.size, fmt.channels), dtype=np.uint8)
    unreadable: list[str] = []
    for i, path in enumerate(progress(paths, "reading images", total=len(paths))):
        try:
            image = read_image(path, fmt.pixel_bits)
        except DataError as exc:
            unreadable.append(str(exc))
            continue
        if shapes is not None:
            shapes.append(image.shape[:2])
        if greys is not None:
            greys.append(one_channel_if_grey(image).ndim == 2)
        out[i] = fmt.frame(image)
    if unreadable:
        raise DataError(unreadable_message(unreadable, len(paths)))
    return out


def available_memory() -> int | None:
    """Bytes this process can still be given without swapping: the kernel's MemAvailable, or
    its control group's limit less its usage where that is less (a container); None where
    neither can be read."""
    free: list[int] = []
    try:
        meminfo = Path("/proc/meminfo").read_text()
        if found := re.search(r"^MemAvailable:\s*(\d+) kB", meminfo, re.MULTILINE):
            free.append(int(found.group(1)) * 1024)
    except OSError:
        pass
    try:
        group = Path("/sys/fs/cgroup")
        limit = (group / "memory.max").read_text().strip()
        if limit.isdigit():
            free.append(int(limit) - int((group / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(free) if free else None


def require_memory(needed: int, what: str) -> None:
    """DataError when `needed` bytes (for `what`) exceed the memory this machine has free."""
    free = available_memory()
    if free is not None and needed > free:
        raise DataError(
            f"{what} need {needed / 2**30:.1f} GiB of memory, and this machine has {max(free, 0) / 2**30:.1f} GiB "
            "free: a smaller --image-size (or model.short_side), or fewer images"
        )


def size_words(size: Sequence[int]) -> str:
    """(height, width) as "HxW"."""
    return "x".join(str(side) for side in size)


# An error names this many unreadable files at most, and counts the rest.
NAMED_UNREADABLE = 10


def named_few(names: Sequence[str], limit: int) -> str:
    """The first `limit` of `names`, comma-separated, then how many more: "a, b, c and 4 more"."""
    rest = len(names) - limit
    return ", ".join(names[:limit]) + (f" and {rest} more" if rest > 0 else "")


def unreadable_message(reasons: list[str], total: int) -> str:
    """One line for the DataErrors of `reasons` (their messages) among `total` images."""
    if len(reasons) == 1:
        return reasons[0]
    named = "; ".join(reasons[:NAMED_UNREADABLE])
    more = f"; and {len(reasons) - NAMED_UNREADABLE} more" if len(reasons) > NAMED_UNREADABLE else ""
    return f"{len(reasons)} of {total} images cannot be read: {named}{more}"


def resize_mask(mask: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """A ground-truth mask (any size, any channels) -> bool at the model's (height, width), nearest neighbour."""
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    height, width = as_size(size)
    return cv2.resize((mask > 0).astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0


def find_images(folder: str | Path) -> list[Path]:
    """Image files anywhere under `folder`, sorted by path, hidden ones left out (is_image);
    DataError when `folder` is not a folder (a mistyped path would otherwise read as a folder
    without images). A linked folder is searched as the training layout reads one (`defects/crack
    -> /data/kos/test/defect`; Path.rglob did not follow it, and found no defect), each real
    folder once, so that a link to a folder above ends."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"no such folder: {folder}")
    found, searched = [], set()
    for root, subfolders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in searched:
            subfolders.clear()
            continue
        searched.add(real)
        subfolders[:] = sorted(name for name in subfolders if not is_hidden(name))  # the first way in, by name
        found.extend(path for name in files if is_image(path := Path(root, name)))
    return sorted(found)


def list_images(folder: str | Path) -> list[Path]:
    """Image files in `folder`, sorted by name (a stable order for splits and reports)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if is_image(p))


def is_image(path: Path) -> bool:
    """An image file by its suffix, not hidden (is_hidden)."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(path.name)


def is_hidden(name: str) -> bool:
    """A hidden file or folder's name: no image or category folder. A copy made on a Mac carries
    a `._NAME.png` beside each image (its metadata, not an image); thumbnail folders are hidden."""
    return name.startswith(".")


def batched(items: Sequence[T], size: int) -> Iterator[T]:
    """Consecutive slices of at most `size` items (arrays, tensors and lists slice alike)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]
