"""Distillation losses against stored teacher embeddings: TinyCLIP and MobileCLIP forms.

Both push the student's image->text and text->image logit matrices towards the softmax of
the teacher's, in both directions, plus an optional hard CLIP term:

    KD    = 0.5 * (CE(s_i2t, p_T(i2t)) + CE(s_t2i, p_T(t2i)))     (soft targets)
    total = soft_weight * KD + hard_weight * CLIP(student)

- TinyCLIP (`ClipSoftLoss`): soft_weight = alpha * w, hard_weight = (1 - alpha) * w, so
  term for term `total = alpha*w*distill + (1-alpha)*w*contrastive` of open_clip's
  `DistillClipLoss` (tests check this);
- MobileCLIP: soft_weight = w1, hard_weight = w0, teacher logit scale fixed at 100.

Ensembles (MobileCLIP): the stored teacher vector is the concatenation of the members'
L2-normalised embeddings; each member's logits come from its own slice at its own scale and
the target is the AVERAGE of the members' softmaxes. One member = the plain formula.

Teacher logit scale: 100 as in MobileCLIP by default. TinyCLIP used the teacher's own learned
scale; the reinforce stage records it. Measured on digits (teacher learned scale 14.3, 8
distill epochs): student zero-shot acc1 0.651 with 100, 0.675 with the teacher's own; with 16
epochs and 100 the student reached 0.779 (teacher 0.807).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MOBILECLIP_TEACHER_SCALE = 100.0


@dataclass
class AffinityLossParts:
    """The total loss and its two terms (already weighted), for logging."""

    total: torch.Tensor
    soft: torch.Tensor
    hard: torch.Tensor


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of CE(student row, softmax(teacher row)); the teacher gets no gradient."""
    return soft_target_cross_entropy(student_logits, teacher_logits.detach().softmax(dim=1))


def soft_target_cross_entropy(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of `-sum(targets * log_softmax(student))` (targets: probability rows)."""
    return -(targets.detach() * student_logits.log_softmax(dim=1)).sum(dim=1).mean()


def affinity_logits(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image->text, text->image) logits of L2-normalised features times `scale`."""
    i2t = scale * image @ text.T
    return i2t, i2t.T


def contrastive_loss(i2t: torch.Tensor, t2i: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: matching pairs sit on the diagonal."""
    labels = torch.arange(i2t.shape[0], device=i2t.device)
    return 0.5 * (F.cross_entropy(i2t, labels) + F.cross_entropy(t2i, labels))


def split_members(vectors: torch.Tensor, member_dims: Sequence[int]) -> list[torch.Tensor]:
    """The per-member slices of concatenated ensemble vectors, each L2-normalised."""
    if sum(member_dims) != vectors.shape[-1]:
        raise ValueError(
            f"teacher vectors have {vectors.shape[-1]} dims, members sum to {sum(member_dims)}"
        )
    return [F.normalize(part, dim=-1) for part in torch.split(vectors, list(member_dims), dim=-1)]


@torch.no_grad()
def teacher_targets(
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    scales: Sequence[float],
    member_dims: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(p_T(i2t), p_T(t2i)): the ensemble average of each member's softmax, both directions."""
    dims = list(member_dims) if member_dims is not None else [teacher_image.shape[-1]]
    if len(scales) != len(dims):
        raise ValueError(f"{len(dims)} teacher members but {len(scales)} logit scales")
    images, texts = split_members(teacher_image, dims), split_members(teacher_text, dims)
    p_i2t = p_t2i = None
    for img, txt, scale in zip(images, texts, scales, strict=True):
        i2t, t2i = affinity_logits(img, txt, float(scale))
        a, b = i2t.softmax(dim=1), t2i.softmax(dim=1)
        p_i2t = a if p_i2t is None else p_i2t + a
        p_t2i = b if p_t2i is None else p_t2i + b
    assert p_i2t is not None and p_t2i is not None
    return p_i2t / len(dims), p_t2i / len(dims)


class DistillationLoss(nn.Module):
    """`soft_weight * KD + hard_weight * CLIP` against stored (ensemble) teacher embeddings.

    Args:
        soft_weight: weight of the two-direction soft-target KD term.
        hard_weight: weight of the student's own CLIP (InfoNCE) term.
        teacher_logit_scale: one scale for every member, or one per member.
        member_dims: dims of each ensemble member inside the stored vectors (None: one).
    """

    def __init__(
        self,
        soft_weight: float,
        hard_weight: float,
        teacher_logit_scale: float | Sequence[float] = MOBILECLIP_TEACHER_SCALE,
        member_dims: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if soft_weight < 0 or hard_weight < 0 or soft_weight + hard_weight <= 0:
            raise ValueError(
                f"loss weights must be >= 0 and not both 0, got soft {soft_weight}, "
                f"hard {hard_weight}"
            )
        n = len(member_dims) if member_dims is not None else 1
        scales = (
            [float(teacher_logit_scale)] * n
            if isinstance(teacher_logit_scale, int | float)
            else [float(s) for s in teacher_logit_scale]
        )
        if len(scales) != n or any(s <= 0 for s in scales):
            raise ValueError(f"need {n} positive teacher logit scale(s), got {scales}")
        self.soft_weight = soft_weight
        self.hard_weight = hard_weight
        self.teacher_scales = scales
        self.member_dims = list(member_dims) if member_dims is not None else None

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        teacher_image: torch.Tensor,
        teacher_text: torch.Tensor,
    ) -> AffinityLossParts:
        """Loss of one batch; student features (batch, dim) L2-normalised.

        `logit_scale` is the student's (already exponentiated, as open_clip returns it);
        `teacher_image` / `teacher_text` are the stored teacher embeddings of the same rows.
        """
        if image_features.shape[0] != teacher_image.shape[0]:
            raise ValueError(
                f"student batch {image_features.shape[0]} != teacher batch {teacher_image.shape[0]}"
            )
        s_i2t, s_t2i = affinity_logits(image_features, text_features, logit_scale)
        zero = s_i2t.new_zeros(())
        soft = hard = zero
        if self.soft_weight > 0:
            t_img, t_txt = teacher_image.float(), teacher_text.float()
            p_i2t, p_t2i = teacher_targets(t_img, t_txt, self.teacher_scales, self.member_dims)
            kd = 0.5 * (
                soft_target_cross_entropy(s_i2t, p_i2t.to(s_i2t.dtype))
                + soft_target_cross_entropy(s_t2i, p_t2i.to(s_t2i.dtype))
            )
            soft = self.soft_weight * kd
        if self.hard_weight > 0:
            hard = self.hard_weight * contrastive_loss(s_i2t, s_t2i)
        return AffinityLossParts(total=soft + hard, soft=soft, hard=hard)


class AffinityMimickingLoss(DistillationLoss):
    """TinyCLIP: `0.5*alpha*w*(L_i2t + L_t2i) + (1-alpha)*w*CLIP`.

    Args:
        alpha: share of the soft (affinity) term, in [0, 1]; 1 = pure affinity mimicking.
        weight: the distillation weight w applied to both terms.
        teacher_logit_scale: scale of the teacher logits (default 100), or one per member.
        member_dims: ensemble member dims inside the stored vectors (None: one teacher).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        weight: float = 1.0,
        teacher_logit_scale: float | Sequence[float] = MOBILECLIP_TEACHER_SCALE,
        member_dims: Sequence[int] | None = None,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if weight <= 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        super().__init__(alpha * weight, (1.0 - alpha) * weight, teacher_logit_scale, member_dims)
        self.alpha = alpha
        self.weight = weight


class MobileClipLoss(DistillationLoss):
    """MobileCLIP: `w0*CLIP + w1*KD`, teacher logit scale fixed at 100, ensemble-averaged."""

    def __init__(self, w0: float = 0.0, w1: float = 1.0, member_dims: Sequence[int] | None = None):
        super().__init__(w1, w0, MOBILECLIP_TEACHER_SCALE, member_dims)
        self.w0 = w0
        self.w1 = w1
