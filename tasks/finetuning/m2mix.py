"""Geodesic multi-modal mixup (m2-mix, changdaeoh/multimodal-mixup): hard negatives on the sphere.

Per step lambda ~ Beta(beta, beta); each pair's hard negative is the geodesic mix of its own
image and caption embeddings, `neg_j = slerp(I_j, T_j, lambda)`. In the mixup logits the
diagonal keeps the positive pair (I_i . T_i) while every off-diagonal entry (i, j) becomes
I_i . neg_j (image->text) or T_i . neg_j (text->image); cross-entropy with identity targets
at temperature tau (0.07). Loss = CLIP + weight * mixup (weight 0.01 in the reference).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from open_clip import ClipLoss

from tasks.params import FinetuneParams
from tasks.training.objective import ClipObjective, Features, LossOutput

_EPS = 1e-6


def slerp(a: torch.Tensor, b: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    """Row-wise `sin(lam*theta)/sin(theta) * a + sin((1-lam)*theta)/sin(theta) * b`.

    `a`, `b` are unit rows `[N, D]`; lam = 1 gives a, lam = 0 gives b, 0.5 the geodesic
    midpoint. Nearly parallel rows (sin theta ~ 0) fall back to the normalised linear mix.
    """
    cos = (a * b).sum(dim=-1, keepdim=True).clamp(-1 + _EPS, 1 - _EPS)
    theta = torch.acos(cos)
    sin = torch.sin(theta)
    lam = torch.as_tensor(lam, dtype=a.dtype, device=a.device)
    mixed = (torch.sin(lam * theta) * a + torch.sin((1 - lam) * theta) * b) / sin
    linear = F.normalize(lam * a + (1 - lam) * b, dim=-1)
    return torch.where(sin > 1e-4, mixed, linear)


def mixup_logits(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor):
    """`[N, N]` logits: diagonal anchor_i . positive_i, off-diagonal anchor_i . negatives_j."""
    logits = anchor @ negatives.T
    eye = torch.eye(len(anchor), dtype=torch.bool, device=anchor.device)
    return torch.where(eye, (anchor * positive).sum(dim=-1).diag_embed(), logits)


def m2mix_loss(
    image: torch.Tensor, text: torch.Tensor, lam: float, temperature: float
) -> torch.Tensor:
    """Symmetric cross-entropy over the mixup logits of both directions (identity targets)."""
    negatives = slerp(image, text, lam)
    targets = torch.arange(len(image), device=image.device)
    i2t = mixup_logits(image, text, negatives) / temperature
    t2i = mixup_logits(text, image, negatives) / temperature
    return 0.5 * (F.cross_entropy(i2t, targets) + F.cross_entropy(t2i, targets))


class M2MixObjective(ClipObjective):
    """CLIP loss + weight * geodesic mixup loss; lambda drawn from a seeded Beta per step."""

    def __init__(self, weight: float, beta: float, temperature: float, seed: int) -> None:
        super().__init__()
        self.weight, self.beta, self.temperature = weight, beta, temperature
        self._rng = np.random.default_rng(seed)
        self._clip = ClipLoss()

    def loss(self, model: torch.nn.Module, features: Features) -> LossOutput:
        image, text = features["image"], features["text"]
        clip = self._clip(image, text, model.logit_scale.exp())
        lam = float(self._rng.beta(self.beta, self.beta))
        mix = m2mix_loss(image, text, lam, self.temperature)
        logs = {"clip": float(clip.detach()), "m2mix": float(mix.detach()), "lambda": lam}
        return clip + self.weight * mix, logs


def objective(params: FinetuneParams) -> M2MixObjective:
    return M2MixObjective(
        params.m2mix_weight, params.m2mix_beta, params.m2mix_temperature, params.seed
    )
