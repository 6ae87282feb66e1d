"""Pooled features of a pretrained HF text tower, computed once per caption and reused.

A locked tower's pooled output depends only on (tower weights, caption). Teacher, reinforce,
distill, finetune, evaluate and register all embed the same captions through the same
MiniLM weights, so the features are memoised on disk, keyed by a fingerprint of the tower's
weights: a fine-tuned (changed) tower gets a new fingerprint and never reads stale features.

The cache directory is `$CLIPOPS_CACHE_DIR/text_features` (default `~/.cache/clipops`);
`CLIPOPS_CACHE_DIR=off` disables it. Entries are written once and never modified, so every
later run reads exactly the values the first run computed.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tasks.models.factory import length_order, trim_padding

_ENV = "CLIPOPS_CACHE_DIR"


def cache_dir() -> Path | None:
    """Where features are memoised, or None when the cache is switched off."""
    value = os.environ.get(_ENV, str(Path.home() / ".cache" / "clipops"))
    if value.lower() in {"", "0", "off", "none"}:
        return None
    return Path(value) / "text_features"


def has_pooled_tower(model: torch.nn.Module) -> bool:
    """True for open_clip's HF text tower (transformer + pooler + proj)."""
    text = getattr(model, "text", None)
    return all(hasattr(text, name) for name in ("transformer", "pooler", "proj", "config"))


def tower_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the transformer and pooler weights (not `proj`, which is trained)."""
    digest = hashlib.sha256()
    text = model.text
    for prefix, module in (("transformer", text.transformer), ("pooler", text.pooler)):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{prefix}.{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def _caption_key(caption: str) -> str:
    return hashlib.sha256(caption.encode("utf-8", "surrogatepass")).hexdigest()


class _Shelf:
    """The cached features of one tower: append-only .npz shards of (keys, features)."""

    def __init__(self, root: Path, fingerprint: str) -> None:
        self.dir = root / fingerprint
        self.features: dict[str, np.ndarray] = {}
        for shard in sorted(self.dir.glob("*.npz")) if self.dir.exists() else []:
            try:
                with np.load(shard) as data:
                    self.features.update(zip(data["keys"].tolist(), data["features"], strict=True))
            except (OSError, ValueError, KeyError):
                continue  # a torn shard from a killed process: recompute those captions

    def add(self, keys: list[str], features: np.ndarray) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"{uuid.uuid4().hex}.npz"
        tmp = self.dir / f".{name}.tmp"
        with tmp.open("wb") as fh:
            np.savez(fh, keys=np.array(keys), features=features)
        tmp.replace(self.dir / name)
        self.features.update(zip(keys, features, strict=True))


@torch.no_grad()
def _compute(
    model: torch.nn.Module, tokens: torch.Tensor, batch_size: int, desc: str
) -> torch.Tensor:
    """Pooled features of `tokens` in length-sorted, padding-trimmed batches (eval mode)."""
    text = model.text
    was_training = text.training
    text.eval()
    device = next(model.parameters()).device
    pad_id = text.config.pad_token_id
    order = length_order(tokens, pad_id)
    ordered = tokens[order]
    out = []
    show = len(tokens) > batch_size
    for start in tqdm(range(0, len(tokens), batch_size), desc=desc, disable=not show, leave=False):
        x = trim_padding(ordered[start : start + batch_size], pad_id).to(device)
        mask = (x != pad_id).long()
        hidden = text.transformer(input_ids=x, attention_mask=mask)
        out.append(text.pooler(hidden, mask).float().cpu())
    text.train(was_training)
    if not out:
        return torch.zeros(0, text.config.hidden_size)
    return torch.cat(out)[order.argsort()]


def pooled_features(
    model: torch.nn.Module,
    tokenizer,
    captions: Sequence[str],
    batch_size: int = 512,
) -> torch.Tensor:
    """Pooled (pre-projection) tower features `[N, hidden]` on CPU, memoised per caption."""
    captions = list(captions)
    root = cache_dir()
    if root is None:
        return _compute(model, tokenizer(captions), batch_size, "text features")
    shelf = _Shelf(root, tower_fingerprint(model))
    keys = [_caption_key(c) for c in captions]
    missing = sorted(
        {k: c for k, c in zip(keys, captions, strict=True) if k not in shelf.features}.items()
    )
    if missing:
        new_keys = [k for k, _ in missing]
        feats = _compute(model, tokenizer([c for _, c in missing]), batch_size, "text features")
        shelf.add(new_keys, feats.numpy())
    return torch.from_numpy(np.stack([shelf.features[k] for k in keys]))
