"""Perceptual image signatures for near-duplicate search: a 64-bit pHash and a tiny thumbnail.

The pHash (imagehash's DCT hash: greyscale 32x32, the 8x8 lowest frequencies against their
median) is what the near-duplicate index searches. On simple drawings it is too coarse:
on the bundled shapes scenes thousands of pairs of *distinct* scenes share a pHash
exactly, because it ignores colour and small objects barely move the low frequencies (see
bench/near_dup.py). So each image also gets an 8x8 RGB thumbnail (192 bytes), and a pHash
candidate pair can be confirmed by `thumbnail_distance`: one minus the correlation of the
two thumbnails, which ignores brightness and contrast changes (near copies) but not a
moved, resized or recoloured object.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from tasks.errors import StageError

THUMB_SIDE = 8  # 8x8x3 = 192 bytes per image: 192 MB for a million images
_PROGRESS_MIN = 5_000


@dataclass(frozen=True)
class ImageSignatures:
    """Per-row signatures; rows without an image have `has_image` False and zero entries."""

    phash: np.ndarray  # uint64 [N]
    thumbnail: np.ndarray  # uint8 [N, THUMB_SIDE, THUMB_SIDE, 3]
    has_image: np.ndarray  # bool [N]


def _open_rgb(image: bytes) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(image))
        return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"undecodable image ({len(image)} bytes): {exc}") from None


def _phash_of(img: Image.Image) -> int:
    bits = imagehash.phash(img, hash_size=8).hash.ravel()  # 64 bools, row-major
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _thumbnail_of(img: Image.Image) -> np.ndarray:
    # BOX is the exact mean of each block: stable under re-encoding noise
    return np.asarray(img.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX), dtype=np.uint8)


def phash64(image: bytes) -> int:
    """The 64-bit perceptual hash of encoded image bytes, as an int in [0, 2**64).

    Raises ValueError when the bytes do not decode.
    """
    return _phash_of(_open_rgb(image))


def image_signatures(
    images: Sequence[bytes | None], ids: Sequence[str] | None = None
) -> ImageSignatures:
    """pHash and thumbnail of every image (one decode each); None rows are marked, not failed.

    Bytes that do not decode raise StageError naming the row (ingest and the shard readers
    quarantine undecodable images, so one reaching curation is a bug upstream).
    """
    n = len(images)
    hashes = np.zeros(n, dtype=np.uint64)
    thumbs = np.zeros((n, THUMB_SIDE, THUMB_SIDE, 3), dtype=np.uint8)
    has_image = np.zeros(n, dtype=bool)
    for i, data in enumerate(
        tqdm(images, desc="image hashes", unit="img", disable=n < _PROGRESS_MIN)
    ):
        if data is None:
            continue
        try:
            img = _open_rgb(bytes(data))
        except ValueError as exc:
            row = ids[i] if ids is not None else f"position {i}"
            raise StageError(
                f"row {row}: {exc}; quarantine undecodable images before curation"
            ) from None
        hashes[i] = _phash_of(img)
        thumbs[i] = _thumbnail_of(img)
        has_image[i] = True
    return ImageSignatures(hashes, thumbs, has_image)


def phash_many(
    images: Sequence[bytes | None], ids: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 pHashes, bool mask of rows that have an image); no-image rows hash to 0."""
    signatures = image_signatures(images, ids)
    return signatures.phash, signatures.has_image


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Element-wise Hamming distance of uint64 hashes (popcount of the XOR)."""
    return np.bitwise_count(np.asarray(a, dtype=np.uint64) ^ np.asarray(b, dtype=np.uint64))


def thumbnail_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - Pearson correlation of thumbnails `[..., S, S, 3]` (0: same picture, up to 2).

    Invariant to a change of brightness and contrast (an affine change of the pixel values),
    so re-encoded, brightened or slightly cropped copies of photos stay near 0 (<= 0.006
    measured), while distinct drawings that share a pHash do not (>= 0.009 measured; their
    differences are small objects on a flat background). Two flat images (no variance) are
    compared by their mean colour instead: 0 when it differs by < 8 levels, else 1.
    """
    x = a.reshape(*a.shape[:-3], -1).astype(np.float64)
    y = b.reshape(*b.shape[:-3], -1).astype(np.float64)
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    var_x = (xc**2).sum(axis=-1)
    var_y = (yc**2).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = (xc * yc).sum(axis=-1) / np.sqrt(var_x * var_y)
    flat = (var_x < 1e-6 * x.shape[-1]) | (var_y < 1e-6 * y.shape[-1])
    mean_gap = np.abs(x.mean(axis=-1) - y.mean(axis=-1))
    return np.where(flat, (mean_gap >= 8).astype(np.float64), 1.0 - np.nan_to_num(corr))
