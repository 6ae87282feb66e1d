"""The distill stage's batch source: stored views and teacher embeddings as tensors.

Each batch picks, per image, one of its k stored augmentations at random (seeded by the
trainer's generator; each image appears once per epoch, so this is MobileCLIP's "one
sampled augmentation per image per epoch"), re-creates that exact view from the image and
its parameters, and serves the teacher's stored embeddings of that view and of the caption
as targets. The teacher itself is never run.
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
    (`[B, D]`, the stored embedding of that view), `teacher_text` (`[B, D]`), `aug_index`,
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
    ) -> None:
        n, k = thetas.shape[:2]
        if not (len(images) == n == len(view_vectors) == len(text_vectors) == len(caption_index)):
            raise ValueError("images, views, teacher vectors and captions must align by row")
        self.images = images
        self.thetas = thetas  # [N, k, 2, 3], float64
        self.view_vectors = view_vectors  # [N, k, D]
        self.text_vectors = text_vectors  # [N, D]
        self.caption_index = caption_index
        self.caption_tokens = caption_tokens
        self.caption_pooled = caption_pooled
        self.num_views = k
        self.mean, self.std = tuple(mean), tuple(std)

    @classmethod
    def build(cls, data: ReinforcedDataset, student: LoadedModel) -> ReinforcedTensors:
        """Decode images at the student's size; tokenise (and, if locked, embed) captions once.

        View boxes are fractions of the image, so they re-create the same view at any size.
        """
        if len(data) < 2:
            raise ValueError(f"need at least 2 reinforced images to train, got {len(data)}")
        pixels = decode_images(data.images, student.image_size, ids=data.pair_ids)
        k = data.view_vectors.shape[1]
        thetas = view_theta([v for per_image in data.views for v in per_image]).reshape(
            len(data), k, 2, 3
        )
        codes, uniques = pd.factorize(pd.Series(data.captions, dtype="object"))
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
            text_vectors=torch.from_numpy(np.ascontiguousarray(data.text_vectors)),
            caption_index=torch.as_tensor(codes, dtype=torch.long),
            caption_tokens=tokens,
            caption_pooled=pooled,
            mean=cfg["mean"],
            std=cfg["std"],
        )

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
            "caption_tokens",
        ):
            setattr(self, name, getattr(self, name).to(device))
        if self.caption_pooled is not None:
            self.caption_pooled = self.caption_pooled.to(device)
        return self

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> Batch:
        """Rows `index`, each with one randomly chosen stored view re-created exactly."""
        aug = torch.randint(self.num_views, (len(index),), generator=generator)
        index = index.to(self.images.device)
        aug = aug.to(self.images.device)
        image = warp(normalize(self.images[index], self.mean, self.std), self.thetas[index, aug])
        caption = self.caption_index[index]
        out: Batch = {
            "image": image,
            "teacher_image": self.view_vectors[index, aug],
            "teacher_text": self.text_vectors[index],
            "aug_index": aug,
            "index": index,
        }
        if self.caption_pooled is not None:
            out["text_pooled"] = self.caption_pooled[caption]
        else:
            out["text"] = self.caption_tokens[caption]
        return out
