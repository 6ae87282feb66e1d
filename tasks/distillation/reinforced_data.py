"""The distill stage's batch source: stored views and teacher embeddings as tensors.

Each batch picks, per image, one of its k stored augmentations at random (seeded by the
trainer's generator; each image appears once per epoch, so this is MobileCLIP's "one
sampled augmentation per image per epoch"), re-creates that exact view from the image and
its parameters, and one caption: with chance `extra_caption_p` one of the image's extra
captions (uniformly), else the real one (an image without extras always uses the real one).
The teacher's stored embeddings of that view and that caption are the targets; the teacher
itself is never run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from tasks.distillation.augment_params import view_theta, warp
from tasks.distillation.reinforced_table import ReinforcedDataset
from tasks.images import decode_images, normalize
from tasks.models.factory import LoadedModel
from tasks.models.text_features import pooled_features
from tasks.training.data import Batch, is_text_locked


class ReinforcedTensors:
    """A `BatchSource` for the trainer built from a `ReinforcedDataset` and the student.

    Batch keys: `image` (the re-created, normalised view `[B, 3, S, S]`), `teacher_image`
    (`[B, D]`, the stored embedding of that view), `teacher_text` (`[B, D]`, of the sampled
    caption), `aug_index`, `caption_slot` (0 = real caption, j >= 1 = extra caption j-1),
    `index`, and `text_pooled` (locked student text tower) or `text` (token ids).
    """

    def __init__(
        self,
        images: torch.Tensor,
        thetas: torch.Tensor,
        view_vectors: torch.Tensor,
        text_vectors: torch.Tensor,
        caption_index: torch.Tensor,
        caption_tokens: torch.Tensor,
        caption_pooled: torch.Tensor | None,
        mean: Sequence[float],
        std: Sequence[float],
        caption_counts: torch.Tensor | None = None,
        extra_caption_p: float = 0.0,
    ) -> None:
        n, k = thetas.shape[:2]
        if text_vectors.dim() == 2:  # one caption per image: slot 0 only
            text_vectors, caption_index = text_vectors[:, None], caption_index[:, None]
        if not (len(images) == n == len(view_vectors) == len(text_vectors) == len(caption_index)):
            raise ValueError("images, views, teacher vectors and captions must align by row")
        if not 0.0 <= extra_caption_p <= 1.0:
            raise ValueError(f"extra_caption_p must be in [0, 1], got {extra_caption_p}")
        self.images = images
        self.thetas = thetas  # [N, k, 2, 3], float64
        self.view_vectors = view_vectors  # [N, k, D]
        self.text_vectors = text_vectors  # [N, C, D]: slot 0 real caption, then extras (padded)
        self.caption_index = caption_index  # [N, C] into caption_tokens / caption_pooled
        self.caption_counts = (
            caption_counts if caption_counts is not None else torch.ones(n, dtype=torch.long)
        )
        self.caption_tokens = caption_tokens
        self.caption_pooled = caption_pooled
        self.num_views = k
        self.extra_caption_p = extra_caption_p
        self.mean, self.std = tuple(mean), tuple(std)

    @classmethod
    def build(
        cls, data: ReinforcedDataset, student: LoadedModel, extra_caption_p: float = 0.0
    ) -> ReinforcedTensors:
        """Decode images at the student's size; tokenise (and, if locked, embed) captions once.

        View boxes are fractions of the image, so they re-create the same view at any size.
        `extra_caption_p` = 0 trains on the real captions only.
        """
        if len(data) < 2:
            raise ValueError(f"need at least 2 reinforced images to train, got {len(data)}")
        pixels = decode_images(data.images, student.image_size, ids=data.pair_ids)
        k = data.view_vectors.shape[1]
        thetas = view_theta([v for per_image in data.views for v in per_image]).reshape(
            len(data), k, 2, 3
        )
        pairs = zip(data.captions, data.extra_captions, strict=True)
        per_row = [[real, *extra] for real, extra in pairs]
        counts = [len(c) for c in per_row]
        slots, dim = max(counts), data.text_vectors.shape[-1]
        flat = [c for row in per_row for c in row]
        codes, uniques = pd.factorize(pd.Series(flat, dtype="object"))
        caption_index = np.zeros((len(data), slots), dtype=np.int64)
        text_vectors = np.zeros((len(data), slots, dim), dtype=np.float32)
        start = 0
        for i, n in enumerate(counts):
            caption_index[i, :n] = codes[start : start + n]
            text_vectors[i, 0] = data.text_vectors[i]
            text_vectors[i, 1:n] = data.extra_vectors[i]
            start += n
        tokens = student.tokenizer(list(uniques))
        locked = is_text_locked(student.model)
        pooled = (
            pooled_features(student.model, student.tokenizer, list(uniques)) if locked else None
        )
        cfg = student.preprocess_cfg
        return cls(
            images=pixels,
            thetas=thetas,
            view_vectors=torch.from_numpy(np.ascontiguousarray(data.view_vectors)),
            text_vectors=torch.from_numpy(text_vectors),
            caption_index=torch.from_numpy(caption_index),
            caption_tokens=tokens,
            caption_pooled=pooled,
            mean=cfg["mean"],
            std=cfg["std"],
            caption_counts=torch.as_tensor(counts, dtype=torch.long),
            extra_caption_p=extra_caption_p,
        )

    @property
    def num_unique_captions(self) -> int:
        return len(self.caption_tokens)

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: torch.device) -> ReinforcedTensors:
        """Move every tensor once; batches are then sliced on the device."""
        for name in (
            "images",
            "thetas",
            "view_vectors",
            "text_vectors",
            "caption_index",
            "caption_counts",
            "caption_tokens",
        ):
            setattr(self, name, getattr(self, name).to(device))
        if self.caption_pooled is not None:
            self.caption_pooled = self.caption_pooled.to(device)
        return self

    def sample_caption_slots(self, index: torch.Tensor, generator: torch.Generator):
        """Per row: 0 (real caption) or 1..E (an extra caption), E = that image's extras."""
        use_extra = torch.rand(len(index), generator=generator) < self.extra_caption_p
        pick = torch.rand(len(index), generator=generator)
        extras = (self.caption_counts[index.to(self.caption_counts.device)] - 1).cpu()
        slot = 1 + (pick * extras).long().clamp(max=(extras - 1).clamp(min=0))
        return torch.where(use_extra & (extras > 0), slot, torch.zeros_like(slot))

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> Batch:
        """Rows `index`, each with one randomly chosen stored view re-created exactly and
        one real-or-extra caption."""
        aug = torch.randint(self.num_views, (len(index),), generator=generator)
        slot = self.sample_caption_slots(index, generator)
        index = index.to(self.images.device)
        aug, slot = aug.to(self.images.device), slot.to(self.images.device)
        image = warp(normalize(self.images[index], self.mean, self.std), self.thetas[index, aug])
        caption = self.caption_index[index, slot]
        out: Batch = {
            "image": image,
            "teacher_image": self.view_vectors[index, aug],
            "teacher_text": self.text_vectors[index, slot],
            "aug_index": aug,
            "caption_slot": slot,
            "index": index,
        }
        if self.caption_pooled is not None:
            out["text_pooled"] = self.caption_pooled[caption]
        else:
            out["text"] = self.caption_tokens[caption]
        return out
