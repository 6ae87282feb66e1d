"""Affinity mimicking loss properties, and the distill stage on tiny real data."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import DistillClipLoss

from tasks import distill
from tasks.distill import AffinityObjective, DistillSummary
from tasks.distillation.affinity_loss import AffinityMimickingLoss, soft_cross_entropy
from tasks.distillation.augment_params import apply_views
from tasks.distillation.inherit import inherit_weights
from tasks.distillation.reinforced_data import ReinforcedTensors
from tasks.distillation.reinforced_table import read_reinforced
from tasks.errors import StageError
from tasks.images import decode_images, normalize
from tasks.layout import Layout
from tasks.models import create_model, load_model, read_card, vision_parameters
from tasks.training.objective import objective_loss
from tasks.training.trainer import train
from tests.test_reinforce import build_reinforced_project, reinforce_params, save_random_teacher


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


# --- the distill stage on a tiny reinforced dataset -------------------------------------


@pytest.fixture(scope="module")
def reinforced(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    layout, _ = build_reinforced_project(tmp_path_factory.mktemp("distill") / "project")
    return layout


@pytest.fixture(scope="module")
def distilled(reinforced: Layout) -> tuple[Layout, DistillSummary]:
    return reinforced, distill.run(reinforce_params(), reinforced)


def test_student_is_loadable_smaller_and_names_its_parent(distilled) -> None:
    layout, summary = distilled
    student = load_model(layout.model_dir("student"))
    teacher_card = read_card(layout.model_dir("teacher"))
    card = student.card
    assert student.name == "clipops-vit-xs-minilm"
    assert card["stage"] == "student"
    assert card["parent"] == {"stage": "teacher", "weights_sha256": teacher_card["weights_sha256"]}
    metrics = card["metrics"]
    assert metrics["vision_params"] == vision_parameters(student.model) == summary.vision_params
    assert metrics["teacher_vision_params"] == teacher_card["metrics"].get(
        "vision_params", metrics["teacher_vision_params"]
    )
    assert metrics["vision_params"] <= 0.5 * metrics["teacher_vision_params"]
    assert card["inheritance"]["initialised"] == 0
    assert summary.steps == 24 // 8 and math.isfinite(summary.final_loss)
    log = pd.read_csv(layout.train_log("distill"))
    assert {"soft_loss", "hard_loss"} <= set(log.columns) and len(log) == 3
    assert (log["hard_loss"] == 0).all()  # alpha = 1: pure affinity mimicking


@pytest.fixture(scope="module")
def student_data(reinforced: Layout):
    """The reinforced data, and a student inherited from the saved teacher with its tensors."""
    data = read_reinforced(reinforced.reinforced_db)
    teacher = load_model(reinforced.model_dir("teacher"))
    student = create_model("clipops-vit-xs-minilm", lock_text=True)
    inherit_weights(teacher.model, student.model)
    return data, student, ReinforcedTensors.build(data, student)


def test_batches_recreate_the_sampled_stored_view(student_data) -> None:
    data, student, tensors = student_data
    batch = tensors.batch(torch.tensor([4, 0, 9]), torch.Generator().manual_seed(0))
    for row, (i, a) in enumerate(zip([4, 0, 9], batch["aug_index"].tolist(), strict=True)):
        x = normalize(
            decode_images([data.images[i]], student.image_size),
            student.preprocess_cfg["mean"],
            student.preprocess_cfg["std"],
        )
        expected = apply_views(x, [data.views[i][a]])[0]
        assert torch.allclose(batch["image"][row], expected, atol=1e-5)
        assert torch.equal(batch["teacher_image"][row], torch.from_numpy(data.view_vectors[i, a]))
        assert torch.equal(batch["teacher_text"][row], torch.from_numpy(data.text_vectors[i]))
    assert "text_pooled" in batch  # locked student text tower: pooled features precomputed
    # Over many draws every stored view gets used.
    seen = {
        int(a)
        for s in range(20)
        for a in tensors.batch(torch.tensor([1]), torch.Generator().manual_seed(s))["aug_index"]
    }
    assert seen == set(range(data.view_vectors.shape[1]))


def test_training_moves_the_student_towards_the_teacher(student_data) -> None:
    """The affinity loss on the whole set (view 0) falls after a few epochs of distillation."""
    _, student, tensors = student_data
    fn = AffinityObjective(AffinityMimickingLoss())
    everything = torch.arange(len(tensors))

    def full_loss() -> float:
        batch = tensors.batch(everything, torch.Generator().manual_seed(0))
        with torch.no_grad():
            return objective_loss(fn, student.model, batch)[0].item()

    before = full_loss()
    params = reinforce_params(epochs=4, lr=2e-3, batch_size=12).distill
    train(student.model, tensors, fn, params, torch.device("cpu"))
    after = full_loss()
    assert after < before - 0.05, f"affinity loss {before:.4f} -> {after:.4f}"


def test_stale_reinforced_dataset_is_refused(reinforced: Layout, tmp_path: Path) -> None:
    layout = Layout.at(tmp_path / "p")
    shutil.copytree(reinforced.reinforced_db, layout.reinforced_db)
    save_random_teacher(layout, seed=7)  # a different teacher than the one reinforced
    with pytest.raises(StageError, match="re-run the reinforce stage"):
        distill.run(reinforce_params(), layout)


def test_student_too_large_and_missing_data_are_refused(reinforced: Layout, tmp_path: Path):
    with pytest.raises(StageError, match="max_vision_fraction"):
        distill.run(reinforce_params(student="clipops-vit-s-minilm"), reinforced)
    with pytest.raises(StageError, match="run the reinforce stage first"):
        distill.run(reinforce_params(), Layout.at(tmp_path / "empty"))
