"""CleanCLIP (nishadsinghi/CleanCLIP): contrastive + in-modal self-supervised loss on views.

    L = clip_weight * 1/2 [CE(s I T^T) + CE(s T I^T)]
      + inmodal_weight * 1/2 [CE(s I I~^T) + CE(s T T~^T)]

I~ and T~ are augmented views of the same image and caption, s the model's logit scale
clamped to <= 100 (ln 100 = 4.6052). Image views: a seeded random resized crop + flip of the
decoded image. Caption views: EDA-style word deletion and swaps, `text_views` variants per
unique caption made once (seeded) and, with a locked text tower, embedded once through it
(memoised per caption), so a step only picks a variant and applies the projection.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from tasks.images import normalize, random_resized_crop_flip
from tasks.models.factory import LoadedModel
from tasks.models.text_features import pooled_features
from tasks.params import FinetuneParams
from tasks.training.data import Batch, PairTensors, encode_batch_text, is_text_locked
from tasks.training.objective import ClipObjective, Features, LossOutput
from tasks.training.stage_common import augment_from

MAX_LOGIT_SCALE = math.log(100.0)


def augment_caption(caption: str, rng: random.Random, drop_p: float, swaps: int) -> str:
    """One EDA-style view: delete each word with chance `drop_p` (keep >= 1), then swap pairs."""
    words = caption.split()
    if len(words) < 2:
        return caption
    kept = [w for w in words if rng.random() >= drop_p] or [rng.choice(words)]
    for _ in range(swaps if len(kept) > 1 else 0):
        i, j = rng.sample(range(len(kept)), 2)
        kept[i], kept[j] = kept[j], kept[i]
    return " ".join(kept)


def caption_views(
    captions: Sequence[str], views: int, drop_p: float, swaps: int, seed: int
) -> list[list[str]]:
    """`views` augmented variants per caption, each differing from the caption when it can.

    Seeded per caption text (not position), so a caption gets the same views in any table.
    """
    out = []
    for caption in captions:
        rng = random.Random(f"{seed}:{caption}")
        variants = []
        for _ in range(views):
            view = caption
            for _ in range(8):  # a few tries to get a view that actually differs
                view = augment_caption(caption, rng, drop_p, swaps)
                if view != caption:
                    break
            variants.append(view)
        out.append(variants)
    return out


class TwoViewPairs:
    """`PairTensors` plus a second, augmented view of each image and caption.

    Extra batch keys: `image_view` (crop/flip of the same decoded image) and either
    `text_view_pooled` (locked tower features of a caption variant) or `text_view` (tokens).
    """

    def __init__(
        self,
        pairs: PairTensors,
        view_tokens: torch.Tensor,
        view_pooled: torch.Tensor | None,
        views_per_caption: int,
        crop_scale_min: float,
        flip_p: float,
    ) -> None:
        self.pairs = pairs
        self.view_tokens = view_tokens  # [U * V, L], caption u's views at rows u*V .. u*V+V-1
        self.view_pooled = view_pooled
        self.views = views_per_caption
        self.crop_scale_min, self.flip_p = crop_scale_min, flip_p

    @classmethod
    def from_frame(
        cls, rows: pd.DataFrame, loaded: LoadedModel, params: FinetuneParams
    ) -> TwoViewPairs:
        pairs = PairTensors.from_frame(rows, loaded, augment_from(params))
        uniques = list(pd.unique(pd.Series(rows["caption"].tolist(), dtype="object")))
        variants = caption_views(
            uniques, params.text_views, params.word_drop_p, params.word_swaps, params.seed
        )
        flat = [v for vs in variants for v in vs]
        tokens = loaded.tokenizer(flat)
        pooled = (
            pooled_features(loaded.model, loaded.tokenizer, flat)
            if is_text_locked(loaded.model)
            else None
        )
        return cls(
            pairs, tokens, pooled, params.text_views, params.view_crop_scale_min, params.view_flip_p
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def to(self, device: torch.device) -> TwoViewPairs:
        self.pairs = self.pairs.to(device)
        self.view_tokens = self.view_tokens.to(device)
        if self.view_pooled is not None:
            self.view_pooled = self.view_pooled.to(device)
        return self

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> Batch:
        out = self.pairs.batch(index, generator)
        p = self.pairs
        index = index.to(p.images.device)
        raw = normalize(p.images[index], p.mean, p.std)
        out["image_view"] = random_resized_crop_flip(
            raw, generator, scale=(self.crop_scale_min, 1.0), flip_p=self.flip_p
        )
        pick = torch.randint(self.views, (len(index),), generator=generator).to(index.device)
        rows = p.caption_index[index] * self.views + pick
        if self.view_pooled is not None:
            out["text_view_pooled"] = self.view_pooled[rows]
        else:
            out["text_view"] = self.view_tokens[rows]
        return out


def _ce_rows(logits: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


class CleanClipObjective(ClipObjective):
    """clip_weight * cross-modal InfoNCE + inmodal_weight * in-modal InfoNCE (see module doc)."""

    def __init__(self, clip_weight: float, inmodal_weight: float) -> None:
        super().__init__()
        self.clip_weight, self.inmodal_weight = clip_weight, inmodal_weight

    def features(self, model: torch.nn.Module, batch: Batch) -> Features:
        feats = super().features(model, batch)
        feats["image_view"] = model.encode_image(batch["image_view"], normalize=True)
        if "text_view_pooled" in batch:
            view = {"text_pooled": batch["text_view_pooled"]}
        else:
            view = {"text": batch["text_view"]}
        feats["text_view"] = encode_batch_text(model, view)
        return feats

    def loss(self, model: torch.nn.Module, features: Features) -> LossOutput:
        scale = model.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        image, text = features["image"], features["text"]
        cross = 0.5 * (_ce_rows(scale * image @ text.T) + _ce_rows(scale * text @ image.T))
        inmodal = 0.5 * (
            _ce_rows(scale * image @ features["image_view"].T)
            + _ce_rows(scale * text @ features["text_view"].T)
        )
        logs = {"clip": float(cross.detach()), "inmodal": float(inmodal.detach())}
        return self.clip_weight * cross + self.inmodal_weight * inmodal, logs


def objective(params: FinetuneParams) -> CleanClipObjective:
    return CleanClipObjective(params.clip_weight, params.inmodal_weight)


def data(rows: pd.DataFrame, loaded: LoadedModel, params: FinetuneParams) -> TwoViewPairs:
    return TwoViewPairs.from_frame(rows, loaded, params)
