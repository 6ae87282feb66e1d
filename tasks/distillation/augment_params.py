"""Stored augmentations (MobileCLIP's `paug`): sample crop+flip parameters, then re-apply them.

A view is a random resized crop plus an optional horizontal flip. Its parameters are kept
as a small JSON object, `{"box": [x0, y0, x1, y1], "flip": bool}`, the box in fractions of
the (square, model-size) decoded image, so the exact view can be re-created later from the
image and the JSON alone: the distill stage trains on views whose teacher embeddings were
computed once by the reinforce stage.

Sampling follows torchvision's RandomResizedCrop (area share in [scale_min, 1], log-uniform
aspect in [3/4, 4/3], 10 tries, then the largest centred box); every image gets its own RNG
seeded from (seed, pair id), so the views do not depend on row order or batch size.
JSON floats round-trip exactly (repr), so re-creation is bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

RATIO = (3 / 4, 4 / 3)
FLIP_P = 0.5
_TRIES = 10


@dataclass(frozen=True)
class ViewParams:
    """One augmentation: crop box (x0, y0, x1, y1) in [0, 1] image fractions and a flip."""

    box: tuple[float, float, float, float]
    flip: bool

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.box
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise ValueError(f"crop box {self.box} must have 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1")

    def to_json(self) -> str:
        """Compact JSON, e.g. `{"box": [0.1, 0.0, 0.9, 0.8], "flip": true}`."""
        return json.dumps({"box": list(self.box), "flip": self.flip}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ViewParams:
        """Parse `to_json` output; a malformed record raises ValueError saying what is wrong."""
        try:
            data = json.loads(text)
            box = tuple(float(v) for v in data["box"])
            flip = data["flip"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed augmentation parameters {text!r}: {exc}") from None
        if len(box) != 4 or not isinstance(flip, bool):
            raise ValueError(f"augmentation parameters need a 4-number box, a bool flip: {text!r}")
        return cls(box=box, flip=flip)  # type: ignore[arg-type]


def image_rng(seed: int, pair_id: str) -> np.random.Generator:
    """An RNG that depends only on the stage seed and the pair id (stable across runs)."""
    digest = hashlib.sha256(f"{seed}:{pair_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def sample_view(rng: np.random.Generator, scale_min: float, flip_p: float = FLIP_P) -> ViewParams:
    """One random resized crop (area share in [scale_min, 1]), mirrored with chance flip_p."""
    if not 0.0 < scale_min <= 1.0:
        raise ValueError(f"scale_min must be in (0, 1], got {scale_min}")
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    w = h = 0.0
    for _ in range(_TRIES):
        area = rng.uniform(scale_min, 1.0)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
        if w <= 1.0 and h <= 1.0:
            break
    else:  # torchvision's fallback: the whole image (clipped to the ratio range)
        w = h = 1.0
    x0 = rng.uniform(0.0, 1.0 - w) if w < 1.0 else 0.0
    y0 = rng.uniform(0.0, 1.0 - h) if h < 1.0 else 0.0
    flip = bool(rng.random() < flip_p)
    return ViewParams(box=(x0, y0, min(1.0, x0 + w), min(1.0, y0 + h)), flip=flip)


def sample_views(
    seed: int, pair_id: str, k: int, scale_min: float, flip_p: float = FLIP_P
) -> list[ViewParams]:
    """The `k` views of one image, reproducible from (seed, pair id)."""
    rng = image_rng(seed, pair_id)
    return [sample_view(rng, scale_min, flip_p) for _ in range(k)]


def view_theta(views: Sequence[ViewParams]) -> torch.Tensor:
    """`[N, 2, 3]` affine maps from output coords [-1, 1] to each crop box (x mirrored when
    flipped), in float64 so that a stored view maps to the same grid however it is batched."""
    if not views:
        return torch.zeros(0, 2, 3, dtype=torch.float64)
    boxes = torch.tensor([v.box for v in views], dtype=torch.float64)
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    half_w, half_h = x1 - x0, y1 - y0  # box half-size in [-1, 1] units = its [0, 1] size
    flips = torch.tensor([v.flip for v in views])
    theta = torch.zeros(len(views), 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = torch.where(flips, -half_w, half_w)
    theta[:, 0, 2] = x0 + x1 - 1.0
    theta[:, 1, 1] = half_h
    theta[:, 1, 2] = y0 + y1 - 1.0
    return theta


def warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample float `[N, C, H, W]` images through `[N, 2, 3]` view maps (`view_theta`).

    Each image's box is resampled bilinearly to the full size (one `grid_sample` for the
    batch), mirrored where the view says so. Deterministic for given inputs.
    """
    if images.dim() != 4 or theta.shape != (images.shape[0], 2, 3):
        raise ValueError(
            f"need [N, C, H, W] images and [N, 2, 3] maps, got {tuple(images.shape)} "
            f"and {tuple(theta.shape)}"
        )
    if not images.is_floating_point():
        raise ValueError("views need float images; normalise the uint8 tensor first")
    if images.shape[0] == 0:
        return images
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def apply_views(images: torch.Tensor, views: Sequence[ViewParams]) -> torch.Tensor:
    """Re-create views: float `[N, C, H, W]` images (normalised or not) -> same shape."""
    if len(views) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(views)} views")
    return warp(images, view_theta(views))
