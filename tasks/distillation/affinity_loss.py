"""TinyCLIP affinity mimicking, computed against stored teacher embeddings (MobileCLIP style).

The student's image->text and text->image logit matrices are pushed towards the softmax of
the teacher's, in both directions (TinyCLIP `ClipSoftLoss`):

    soft  = 0.5 * alpha * w * (CE(s_i2t, softmax(t_i2t)) + CE(s_t2i, softmax(t_t2i)))
    hard  = (1 - alpha) * w * ClipLoss(student)
    total = soft + hard

so, term for term, `total = alpha*w*distill + (1-alpha)*w*contrastive` of open_clip's
`DistillClipLoss`. The teacher side is built from embeddings read from the reinforced dataset:
the teacher is never run while the student trains.

Teacher logit scale: fixed, by default 100 as in MobileCLIP (its KD targets use a fixed 100
rather than the teacher's learned temperature). `teacher_logit_scale` can be set to the
teacher's own learned scale instead (the reinforce stage records it). Measured on digits
(teacher learned scale 14.3, 8 distill epochs): student zero-shot acc1 0.651 with 100,
0.675 with the teacher's own; with 16 epochs and 100 the student reached 0.779 (teacher 0.807).
"""

from __future__ import annotations

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
    targets = teacher_logits.detach().softmax(dim=1)
    return -(targets * student_logits.log_softmax(dim=1)).sum(dim=1).mean()


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


class AffinityMimickingLoss(nn.Module):
    """TinyCLIP's soft loss (plus the optional hard CLIP term) against stored embeddings.

    Args:
        alpha: share of the soft (affinity) term, in [0, 1]; 1 = pure affinity mimicking.
        weight: the distillation weight w applied to both terms.
        teacher_logit_scale: the fixed scale of the teacher logits (default 100, MobileCLIP).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        weight: float = 1.0,
        teacher_logit_scale: float = MOBILECLIP_TEACHER_SCALE,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if weight <= 0 or teacher_logit_scale <= 0:
            raise ValueError(
                f"weight and teacher_logit_scale must be > 0, got {weight}, {teacher_logit_scale}"
            )
        self.alpha = alpha
        self.weight = weight
        self.teacher_logit_scale = teacher_logit_scale

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        teacher_image: torch.Tensor,
        teacher_text: torch.Tensor,
    ) -> AffinityLossParts:
        """Loss of one batch; all feature tensors are (batch, dim) and L2-normalised.

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
        if self.alpha > 0:
            t_img, t_txt = teacher_image.to(s_i2t.dtype), teacher_text.to(s_i2t.dtype)
            t_i2t, t_t2i = affinity_logits(t_img, t_txt, self.teacher_logit_scale)
            soft = (
                0.5
                * self.alpha
                * self.weight
                * (soft_cross_entropy(s_i2t, t_i2t) + soft_cross_entropy(s_t2i, t_t2i))
            )
        if self.alpha < 1:
            hard = (1.0 - self.alpha) * self.weight * contrastive_loss(s_i2t, s_t2i)
        return AffinityLossParts(total=soft + hard, soft=soft, hard=hard)
