"""Distillation with the teacher run ONLINE: the baseline the reinforced dataset replaces.

MobileCLIP's point is that storing the teacher's embeddings once (the reinforce stage) makes
student training cheaper than running the teacher at every step. `OnlineTeacherTensors` is
the other side of that comparison: a `BatchSource` with the same batch keys as
`ReinforcedTensors` (`image`, `teacher_image`, `teacher_text`, caption features), but each
batch draws a FRESH random view (same crop/flip family as reinforce) and runs every teacher
on that view and on the caption. Train with the same objective:

    source = OnlineTeacherTensors.build(data, student, teachers, crop_scale_min=0.6)
    train(student.model, source, DistillObjective(loss), params, device)

`teacher_embeddings(teachers, images, tokens)` is the per-step teacher cost on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tasks.device import autocast
from tasks.distillation.augment_params import FLIP_P, sample_view, view_theta, warp
from tasks.distillation.reinforced_table import ReinforcedDataset
from tasks.images import decode_images, normalize
from tasks.models.factory import LoadedModel
from tasks.models.text_features import pooled_features
from tasks.training.data import Batch, is_text_locked


@torch.no_grad()
def teacher_embeddings(
    teachers: Sequence[LoadedModel],
    views: Sequence[torch.Tensor],
    tokens: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, text) embeddings of every member, each L2-normalised, concatenated in order.

    `views[m]` are member m's normalised input images `[B, 3, S_m, S_m]`, `tokens[m]` the
    captions in member m's tokenizer `[B, L]`.
    """
    images, texts = [], []
    for teacher, x, tok in zip(teachers, views, tokens, strict=True):
        with autocast(x.device):
            img = teacher.model.encode_image(x)
            txt = teacher.model.encode_text(tok)
        images.append(F.normalize(img.float(), dim=-1))
        texts.append(F.normalize(txt.float(), dim=-1))
    return torch.cat(images, dim=1), torch.cat(texts, dim=1)


class OnlineTeacherTensors:
    """A trainer `BatchSource`: fresh views each step, teacher(s) run on every batch."""

    def __init__(
        self,
        student_images: torch.Tensor,
        teacher_images: list[torch.Tensor],
        caption_index: torch.Tensor,
        student_tokens: torch.Tensor,
        student_pooled: torch.Tensor | None,
        teacher_tokens: list[torch.Tensor],
        student: LoadedModel,
        teachers: Sequence[LoadedModel],
        crop_scale_min: float,
        flip_p: float,
    ) -> None:
        self.student_images = student_images
        self.teacher_images = teacher_images
        self.caption_index = caption_index
        self.student_tokens = student_tokens
        self.student_pooled = student_pooled
        self.teacher_tokens = teacher_tokens
        self.student_norm = (student.preprocess_cfg["mean"], student.preprocess_cfg["std"])
        self.teacher_norms = [(t.preprocess_cfg["mean"], t.preprocess_cfg["std"]) for t in teachers]
        self.teachers = list(teachers)
        self.crop_scale_min = crop_scale_min
        self.flip_p = flip_p

    @classmethod
    def build(
        cls,
        data: ReinforcedDataset,
        student: LoadedModel,
        teachers: Sequence[LoadedModel],
        crop_scale_min: float = 0.6,
        flip_p: float = FLIP_P,
    ) -> OnlineTeacherTensors:
        """Images and real captions of a reinforced dataset (its stored vectors are unused)."""
        if len(data) < 2:
            raise ValueError(f"need at least 2 images to train, got {len(data)}")
        codes, uniques = pd.factorize(pd.Series(data.captions, dtype="object"))
        captions = list(uniques)
        pooled = (
            pooled_features(student.model, student.tokenizer, captions)
            if is_text_locked(student.model)
            else None
        )
        for teacher in teachers:
            teacher.model.eval()
        return cls(
            student_images=decode_images(data.images, student.image_size, ids=data.pair_ids),
            teacher_images=[decode_images(data.images, t.image_size) for t in teachers],
            caption_index=torch.as_tensor(codes, dtype=torch.long),
            student_tokens=student.tokenizer(captions),
            student_pooled=pooled,
            teacher_tokens=[t.tokenizer(captions) for t in teachers],
            student=student,
            teachers=teachers,
            crop_scale_min=crop_scale_min,
            flip_p=flip_p,
        )

    def __len__(self) -> int:
        return len(self.student_images)

    def to(self, device: torch.device) -> OnlineTeacherTensors:
        self.student_images = self.student_images.to(device)
        self.teacher_images = [t.to(device) for t in self.teacher_images]
        self.caption_index = self.caption_index.to(device)
        self.student_tokens = self.student_tokens.to(device)
        self.teacher_tokens = [t.to(device) for t in self.teacher_tokens]
        if self.student_pooled is not None:
            self.student_pooled = self.student_pooled.to(device)
        for teacher in self.teachers:
            teacher.model.to(device)
        return self

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> Batch:
        seed = int(torch.randint(2**62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        theta = view_theta([sample_view(rng, self.crop_scale_min, self.flip_p) for _ in index])
        index = index.to(self.student_images.device)
        image = warp(normalize(self.student_images[index], *self.student_norm), theta)
        teacher_views = [
            warp(normalize(pixels[index], *norm), theta)
            for pixels, norm in zip(self.teacher_images, self.teacher_norms, strict=True)
        ]
        caption = self.caption_index[index]
        t_img, t_txt = teacher_embeddings(
            self.teachers, teacher_views, [tok[caption] for tok in self.teacher_tokens]
        )
        out: Batch = {"image": image, "teacher_image": t_img, "teacher_text": t_txt, "index": index}
        if self.student_pooled is not None:
            out["text_pooled"] = self.student_pooled[caption]
        else:
            out["text"] = self.student_tokens[caption]
        return out
