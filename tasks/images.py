"""Images as tensors: decode encoded bytes once, normalise, and augment whole batches.

Training decodes the pair table's PNG/JPEG bytes once into a uint8 tensor `[N, 3, S, S]`
(resize the shorter side to S with bicubic, then centre-crop, as open_clip's eval
preprocess does), so no step pays for PIL again. Augmentations are seeded tensor ops on
a whole batch: a random resized crop (as one `grid_sample`) and an optional flip.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torchvision.transforms import InterpolationMode
from tqdm.auto import tqdm


class ImageDecodeError(ValueError):
    """Encoded image bytes could not be decoded."""


def decode_image(data: bytes, size: int) -> torch.Tensor:
    """Decode one image to uint8 `[3, size, size]`: RGB, shorter side -> size, centre crop."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        img = TF.resize(img, size, interpolation=InterpolationMode.BICUBIC)
        img = TF.center_crop(img, [size, size])
        return TF.pil_to_tensor(img)


def decode_images(
    images: Sequence[bytes], size: int, ids: Sequence[str] | None = None, progress: bool = True
) -> torch.Tensor:
    """Decode a sequence of encoded images into one uint8 tensor `[N, 3, size, size]`.

    An undecodable image raises ImageDecodeError naming its position (and id when given):
    the pair table is validated upstream, so a bad image here is a bug worth stopping for.
    """
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
    quiet = not progress or len(images) < 2000
    bar = tqdm(images, desc="decode images", disable=quiet, leave=False)
    for i, data in enumerate(bar):
        try:
            out[i] = decode_image(data, size)
        except Exception as exc:  # PIL raises many types for corrupt data
            where = f"row {i}" + (f" (id {ids[i]})" if ids is not None else "")
            raise ImageDecodeError(f"image at {where} could not be decoded: {exc}") from exc
    return out


def normalize(
    batch: torch.Tensor,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
) -> torch.Tensor:
    """uint8 (or [0, 255] float) `[N, 3, H, W]` -> float32 normalised with open_clip's mean/std."""
    x = batch.to(torch.float32) / 255.0
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def random_resized_crop_flip(
    batch: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.6, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-image random resized crop (area share in `scale`, aspect in `ratio`) and h-flip.

    Works on float `[N, C, H, W]` (normalise first) and returns the same shape: each image's
    crop box is an affine map sampled bilinearly back to full size. The random draws come
    from `generator` (on CPU), so a seed fixes the augmentations exactly; or, when given,
    from `uniforms` (`[N, 5]` in [0, 1): area, aspect, x, y, flip per image), e.g. keyed by
    row id so a row's view does not depend on the rest of the batch.
    """
    n = batch.shape[0]
    if uniforms is None:
        uniforms = torch.rand(n, 5, generator=generator)
    if uniforms.shape != (n, 5):
        raise ValueError(f"uniforms must be [{n}, 5], got {tuple(uniforms.shape)}")
    u = uniforms.to("cpu", torch.float32)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_lo, log_hi = torch.log(torch.tensor(ratio)).tolist()
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    # Box half-sizes in normalised coords ([-1, 1] spans the image), clipped to fit.
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (u[:, 2] * 2 - 1) * (1 - w)
    cy = (u[:, 3] * 2 - 1) * (1 - h)
    flip = u[:, 4] < flip_p
    sx = torch.where(flip, -w, w)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    theta = theta.to(device=batch.device, dtype=batch.dtype)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
