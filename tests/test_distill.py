"""Affinity mimicking loss properties, and the distill stage on tiny real data."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import DistillClipLoss

from tasks.distillation.affinity_loss import AffinityMimickingLoss, soft_cross_entropy


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_matches_open_clip_distill_clip_loss(alpha: float) -> None:
    """total = alpha*w*distill + (1-alpha)*w*contrastive of open_clip's DistillClipLoss."""
    img, txt, t_img, t_txt = (_unit(6, 8, s) for s in range(4))
    scale = torch.tensor(20.0)
    w = 1.7
    ours = AffinityMimickingLoss(alpha=alpha, weight=w, teacher_logit_scale=100.0)
    parts = ours(img, txt, scale, t_img, t_txt)
    contrastive, distill = DistillClipLoss()(img, txt, scale, t_img, t_txt, torch.tensor(100.0))
    expected = alpha * w * distill + (1 - alpha) * w * contrastive
    assert torch.allclose(parts.total, expected, atol=1e-5)
    assert torch.allclose(parts.soft, alpha * w * distill, atol=1e-5)


def test_hand_computed_two_by_two() -> None:
    """Two orthogonal teacher pairs and a student that confuses them half way."""
    t_img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t_txt = t_img.clone()
    s_img = t_img.clone()
    s_txt = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # both captions look like caption 0
    loss = AffinityMimickingLoss(alpha=1.0, weight=1.0, teacher_logit_scale=1.0)
    parts = loss(s_img, s_txt, torch.tensor(1.0), t_img, t_txt)
    # teacher rows: softmax([1, 0]) = [p, q] (and [q, p]); p = e/(e+1).
    p = math.e / (math.e + 1)
    q = 1 - p
    # student i2t rows: [1, 1] -> log 1/2 each; [0, 0] -> log 1/2 each.
    l_i2t = math.log(2)
    # student t2i rows: [1, 0] for both captions: row 0 vs [p, q], row 1 vs [q, p].
    ls = [math.log(p), math.log(q)]  # log_softmax([1, 0])
    l_t2i = -0.5 * ((p * ls[0] + q * ls[1]) + (q * ls[0] + p * ls[1]))
    assert parts.total.item() == pytest.approx(0.5 * (l_i2t + l_t2i), rel=1e-6)


def test_minimum_and_zero_gradient_when_student_matches_teacher() -> None:
    t_img, t_txt = _unit(5, 16, 10), _unit(5, 16, 11)
    img = t_img.clone().requires_grad_(True)
    txt = t_txt.clone().requires_grad_(True)
    loss = AffinityMimickingLoss(teacher_logit_scale=30.0)
    at_teacher = loss(img, txt, torch.tensor(30.0), t_img, t_txt).total
    at_teacher.backward()
    assert img.grad.abs().max() < 1e-5 and txt.grad.abs().max() < 1e-5
    for seed in range(5):
        moved = F.normalize(t_img + 0.3 * _unit(5, 16, 100 + seed), dim=-1)
        worse = loss(moved, t_txt, torch.tensor(30.0), t_img, t_txt).total
        assert worse > at_teacher + 1e-4


def test_directions_are_symmetric() -> None:
    """Swapping the image and text roles swaps i2t with t2i and leaves the loss unchanged."""
    img, txt, t_img, t_txt = (_unit(7, 8, s) for s in range(20, 24))
    loss = AffinityMimickingLoss(alpha=0.6)
    a = loss(img, txt, torch.tensor(15.0), t_img, t_txt).total
    b = loss(txt, img, torch.tensor(15.0), t_txt, t_img).total
    assert torch.allclose(a, b, atol=1e-6)


def test_soft_cross_entropy_gradient_is_softmax_difference() -> None:
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4)
    soft_cross_entropy(s, t).backward()
    expected = (s.detach().softmax(1) - t.softmax(1)) / 3
    assert torch.allclose(s.grad, expected, atol=1e-6)


def test_rejects_bad_settings_and_mismatched_batches() -> None:
    with pytest.raises(ValueError, match="alpha"):
        AffinityMimickingLoss(alpha=1.5)
    with pytest.raises(ValueError, match="batch"):
        a, b, c, d = _unit(4, 8, 0), _unit(4, 8, 1), _unit(3, 8, 2), _unit(3, 8, 3)
        AffinityMimickingLoss()(a, b, 10.0, c, d)
