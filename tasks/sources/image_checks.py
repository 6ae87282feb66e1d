"""Decode checks, size limits and storage encoding shared by every image source.

Every image that enters the pair table passes through `store_image`, so all sources obey
the same rules: RGB, at most `max_side` pixels per side (aspect kept), PNG unless it is
already a small RGB JPEG, and `sha256` of exactly the stored bytes.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

# EXIF orientation tag: images with another value are rotated before storing.
_EXIF_ORIENTATION = 0x0112
JPEG_QUALITY = 90


@dataclass(frozen=True)
class StoredImage:
    """Encoded image bytes as they go into the pair table, with their size and hash."""

    data: bytes
    width: int
    height: int
    sha256: str
    format: str  # "PNG" or "JPEG"


class ImageRejected(Exception):
    """An image failed a check; `reason` is a QUARANTINE_REASONS code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def fit_within(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Size after downscaling so that no side exceeds `max_side`, aspect kept (never upscales)."""
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode_image(img: Image.Image, fmt: str = "PNG") -> StoredImage:
    """Encode an RGB image as PNG or JPEG (deterministic: fixed settings, no metadata)."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    buf = io.BytesIO()
    if fmt == "PNG":
        img.save(buf, format="PNG", optimize=False, compress_level=6)
    elif fmt == "JPEG":
        img.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=False, subsampling=0)
    else:
        raise ValueError(f"unsupported storage format {fmt!r}: use PNG or JPEG")
    data = buf.getvalue()
    return StoredImage(data, img.width, img.height, sha256_hex(data), fmt)


def to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float greyscale scaled into 0..255 (PIL's own convert clips them to white)."""
    if not (img.mode.startswith("I") or img.mode == "F"):
        return img
    arr = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
    if img.mode == "F" and arr.max() <= 1.0:
        top = 1.0  # float images usually hold 0..1
    return Image.fromarray(np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8), "L")


def store_image(img: Image.Image, max_side: int, fmt: str = "PNG") -> StoredImage:
    """Downscale `img` to fit `max_side` (bicubic, aspect kept) and encode it as `fmt`."""
    img = img.convert("RGB") if img.mode != "RGB" else img
    size = fit_within(img.width, img.height, max_side)
    if size != img.size:
        # Bicubic with PIL's scaled support antialiases like Lanczos at half the cost.
        img = img.resize(size, Image.Resampling.BICUBIC)
    return encode_image(img, fmt)


def decode_checked(data: bytes, min_side: int) -> Image.Image:
    """Fully decode image bytes or raise ImageRejected.

    `verify()` catches structural damage (bad PNG CRCs) but not truncation, so the bytes are
    opened a second time and decoded with `load()`.
    """
    if not data:
        raise ImageRejected("image_empty", "zero bytes")
    # A project-wide LOAD_TRUNCATED_IMAGES=True would silently pad truncated files with grey.
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                probe.verify()
            img = Image.open(io.BytesIO(data))
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("image_too_large", f"too many pixels: {exc}") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageRejected("image_undecodable", f"{type(exc).__name__}: {exc}") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    if min(img.size) < min_side:
        raise ImageRejected(
            "image_too_small",
            f"{img.width}x{img.height} has a side below ingest.min_image_side={min_side}",
        )
    return img


def store_encoded(data: bytes, *, min_side: int, max_side: int) -> StoredImage:
    """Check encoded bytes and turn them into a StoredImage.

    A JPEG that is already RGB, upright and within `max_side` is kept byte for byte (re-encoding
    would only lose quality). A larger JPEG is downscaled and stays JPEG (a photo as PNG is many
    times bigger); everything else becomes an RGB PNG.
    """
    img = decode_checked(data, min_side)
    is_jpeg = img.format == "JPEG"
    orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    if is_jpeg and img.mode == "RGB" and orientation == 1 and max(img.size) <= max_side:
        return StoredImage(data, img.width, img.height, sha256_hex(data), "JPEG")
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)  # animated GIF/PNG/WebP: the first frame is the image
    img = to_8bit(ImageOps.exif_transpose(img))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparency on white so transparent pixels do not turn black.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return store_image(img, max_side, "JPEG" if is_jpeg else "PNG")


def read_image_file(path: Path, max_bytes: int) -> bytes:
    """Read an image file, or raise ImageRejected for a missing, empty or oversized file."""
    try:
        if not path.exists():
            raise ImageRejected("image_missing", f"{path} does not exist")
        if not path.is_file():
            raise ImageRejected("image_missing", f"{path} is not a regular file")
        size = path.stat().st_size
        if size == 0:
            raise ImageRejected("image_empty", f"{path} has zero bytes")
        if size > max_bytes:
            raise ImageRejected(
                "image_too_large", f"{path} has {size} bytes > ingest.max_image_bytes={max_bytes}"
            )
        return path.read_bytes()
    except OSError as exc:  # permissions, name too long, I/O error: the image is not available
        raise ImageRejected("image_missing", f"{path} could not be read: {exc}") from None
