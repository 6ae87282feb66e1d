"""Embeddings for people and stores: images and captions -> L2-normalised float32 arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from tasks.device import autocast
from tasks.images import decode_images, normalize
from tasks.models.factory import LoadedModel, hf_pad_id, length_order, trim_padding
from tasks.models.text_features import has_pooled_tower, pooled_features

_PROGRESS_MIN = 2048  # below this many inputs a bar is noise


def _batches(n: int, batch_size: int, desc: str) -> tqdm:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return tqdm(range(0, n, batch_size), desc=desc, disable=n < _PROGRESS_MIN, leave=False)


@torch.no_grad()
def encode_image_tensor(loaded: LoadedModel, batch_uint8: torch.Tensor) -> torch.Tensor:
    """Embed decoded uint8 images `[N, 3, S, S]` (one forward pass, normalised features)."""
    device = loaded.device
    cfg = loaded.preprocess_cfg
    x = normalize(batch_uint8.to(device), cfg["mean"], cfg["std"])
    with autocast(device):
        feats = loaded.model.encode_image(x)
    return torch.nn.functional.normalize(feats.float(), dim=-1)


def encode_images(
    loaded: LoadedModel, images: Sequence[bytes], batch_size: int = 256
) -> np.ndarray:
    """Embed encoded image bytes: `[N, embed_dim]` float32, rows of unit L2 norm.

    Images are resized/centre-cropped to the model's size and normalised as open_clip's
    eval preprocess does; the model runs in eval mode without gradients.
    """
    loaded.model.eval()
    out = []
    for start in _batches(len(images), batch_size, "encode images"):
        chunk = decode_images(images[start : start + batch_size], loaded.image_size, progress=False)
        out.append(encode_image_tensor(loaded, chunk).cpu())
    return _stack(out, loaded)


@torch.no_grad()
def encode_texts(loaded: LoadedModel, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Embed captions: `[N, embed_dim]` float32, rows of unit L2 norm (eval mode, no grad)."""
    loaded.model.eval()
    device = loaded.device
    if len(texts) == 0:
        return _stack([], loaded)
    if has_pooled_tower(loaded.model):
        # HF tower: encode_text == proj(pooled), and pooled features are memoised per caption
        pooled = pooled_features(loaded.model, loaded.tokenizer, texts, batch_size)
        feats = loaded.model.text.proj(pooled.to(device))
        return _stack([torch.nn.functional.normalize(feats.float(), dim=-1).cpu()], loaded)
    pad_id = hf_pad_id(loaded.model)
    all_tokens = loaded.tokenizer(list(texts))
    order = length_order(all_tokens, pad_id)
    ordered = all_tokens[order]
    out = []
    for start in _batches(len(texts), batch_size, "encode texts"):
        tokens = trim_padding(ordered[start : start + batch_size], pad_id).to(device)
        with autocast(device):
            feats = loaded.model.encode_text(tokens)
        out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())
    return _stack(out, loaded)[order.argsort().numpy()]


def _stack(parts: list[torch.Tensor], loaded: LoadedModel) -> np.ndarray:
    if not parts:
        dim = int(loaded.model_cfg["embed_dim"])
        return np.zeros((0, dim), dtype=np.float32)
    return torch.cat(parts).numpy().astype(np.float32, copy=False)
