"""Affinity mimicking loss properties, and the distill stage on tiny real data."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import DistillClipLoss

from tasks import distill, reinforce
from tasks.distill import AffinityObjective, DistillObjective, DistillSummary
from tasks.distillation.affinity_loss import (
    AffinityMimickingLoss,
    MobileClipLoss,
    soft_cross_entropy,
    teacher_targets,
)
from tasks.distillation.augment_params import apply_views
from tasks.distillation.inherit import inherit_weights
from tasks.distillation.online_teacher import OnlineTeacherTensors
from tasks.distillation.reinforced_data import ReinforcedTensors
from tasks.distillation.reinforced_table import read_reinforced
from tasks.errors import StageError
from tasks.images import decode_images, normalize
from tasks.layout import Layout
from tasks.models import (
    create_model,
    encode_images,
    encode_texts,
    load_model,
    read_card,
    save_model,
    vision_parameters,
)
from tasks.models.text_features import pooled_features
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
    return reinforced, distill.run(reinforce_params(compare_scratch=True), reinforced)


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


# --- MobileCLIP KD and ensembles ---------------------------------------------------------


def test_mobileclip_kd_equals_a_hand_computation() -> None:
    """KD = 1/2 [CE(p_T(i2t), log_softmax(s_i2t)) + CE(p_T(t2i), log_softmax(s_t2i))], scale 100."""
    img, txt = _unit(3, 4, 30), _unit(3, 4, 31)
    t_img, t_txt = _unit(3, 4, 32), _unit(3, 4, 33)
    s_scale = 7.0
    s = (s_scale * img @ txt.T).tolist()
    t = (100.0 * t_img @ t_txt.T).tolist()

    def softmax(row):
        m = max(row)
        e = [math.exp(x - m) for x in row]
        return [x / sum(e) for x in e]

    def ce(target_row, logit_row):
        logz = math.log(sum(math.exp(x) for x in logit_row))
        return -sum(p * (x - logz) for p, x in zip(target_row, logit_row, strict=True))

    def col(m, j):
        return [row[j] for row in m]

    i2t = sum(ce(softmax(t[r]), s[r]) for r in range(3)) / 3
    t2i = sum(ce(softmax(col(t, r)), col(s, r)) for r in range(3)) / 3
    kd = 0.5 * (i2t + t2i)
    clip = 0.5 * (
        sum(-math.log(softmax(s[r])[r]) for r in range(3)) / 3
        + sum(-math.log(softmax(col(s, r))[r]) for r in range(3)) / 3
    )
    parts = MobileClipLoss(w0=0.25, w1=0.75)(img, txt, torch.tensor(s_scale), t_img, t_txt)
    assert parts.soft.item() == pytest.approx(0.75 * kd, rel=1e-5)
    assert parts.hard.item() == pytest.approx(0.25 * clip, rel=1e-5)
    assert parts.total.item() == pytest.approx(0.75 * kd + 0.25 * clip, rel=1e-5)


def test_mobileclip_kd_has_zero_gradient_at_the_teachers_logits() -> None:
    """Student features equal to the teacher's and student scale 100 = the teacher's logits:
    the KD term is at its minimum (gradient 0). Not true once w0 > 0 (the CLIP term pulls)."""
    t_img, t_txt = _unit(6, 8, 40), _unit(6, 8, 41)
    img = t_img.clone().requires_grad_(True)
    txt = t_txt.clone().requires_grad_(True)
    MobileClipLoss(w0=0.0, w1=1.0)(img, txt, torch.tensor(100.0), t_img, t_txt).total.backward()
    assert img.grad.abs().max() < 1e-5 and txt.grad.abs().max() < 1e-5
    img.grad = txt.grad = None
    MobileClipLoss(w0=0.5, w1=1.0)(img, txt, torch.tensor(100.0), t_img, t_txt).total.backward()
    assert img.grad.abs().max() > 1e-4


def test_tinyclip_and_mobileclip_forms_agree_term_for_term() -> None:
    """alpha*w*KD + (1-alpha)*w*CLIP == w1*KD + w0*CLIP with w1 = alpha*w, w0 = (1-alpha)*w."""
    img, txt, t_img, t_txt = (_unit(5, 8, s) for s in range(50, 54))
    tiny = AffinityMimickingLoss(alpha=0.4, weight=2.0, teacher_logit_scale=100.0)
    mobile = MobileClipLoss(w0=0.6 * 2.0, w1=0.4 * 2.0)
    a, b = (f(img, txt, torch.tensor(12.0), t_img, t_txt).total for f in (tiny, mobile))
    assert torch.allclose(a, b, atol=1e-6)


def test_ensemble_target_averages_member_softmaxes() -> None:
    """Two members concatenated: target = mean of each member's softmax at its own scale."""
    a_img, a_txt = _unit(4, 3, 60), _unit(4, 3, 61)
    b_img, b_txt = _unit(4, 5, 62), _unit(4, 5, 63)
    t_img, t_txt = torch.cat([a_img, b_img], 1), torch.cat([a_txt, b_txt], 1)
    p_i2t, p_t2i = teacher_targets(t_img, t_txt, [100.0, 20.0], [3, 5])
    pa, pb = (100.0 * a_img @ a_txt.T), (20.0 * b_img @ b_txt.T)
    assert torch.allclose(p_i2t, 0.5 * (pa.softmax(1) + pb.softmax(1)), atol=1e-6)
    assert torch.allclose(p_t2i, 0.5 * (pa.T.softmax(1) + pb.T.softmax(1)), atol=1e-6)
    assert torch.allclose(p_i2t.sum(1), torch.ones(4))
    # ...which is not the softmax of the summed (concatenated-vector) logits
    assert not torch.allclose(p_i2t, (pa + pb).softmax(1), atol=1e-3)
    # MobileCLIP's loss uses it, every member at the fixed scale 100
    img, txt = _unit(4, 6, 64), _unit(4, 6, 65)
    both = MobileClipLoss(member_dims=[3, 5])(img, txt, 10.0, t_img, t_txt).total
    pb = 100.0 * b_img @ b_txt.T
    manual = 0.5 * (
        -(0.5 * (pa.softmax(1) + pb.softmax(1)) * (10.0 * img @ txt.T).log_softmax(1)).sum(1).mean()
        - (0.5 * (pa.T.softmax(1) + pb.T.softmax(1)) * (10.0 * txt @ img.T).log_softmax(1))
        .sum(1)
        .mean()
    )
    assert torch.allclose(both, manual, atol=1e-5)
    with pytest.raises(ValueError, match="members sum"):
        teacher_targets(t_img, t_txt, [100.0, 20.0], [3, 4])


# --- stage variants: metrics, MobileCLIP loss, progressive stages, ensembles, online --------


def _copy_project(reinforced: Layout, tmp_path: Path) -> Layout:
    """A private copy of the reinforced project (the module fixture's student stays intact)."""
    layout = Layout.at(tmp_path / "copy")
    for part in ("data", "models"):
        shutil.copytree(reinforced.root / part, layout.root / part)
    return layout


def test_metrics_compare_teacher_student_and_scratch_at_equal_steps(distilled) -> None:
    layout, summary = distilled
    metrics = json.loads(layout.distill_metrics.read_text())
    for key in ("teacher_zeroshot_acc1", "student_zeroshot_acc1", "scratch_zeroshot_acc1"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["scratch_steps"] == metrics["distill_steps"] == summary.steps
    ratio = metrics["student_zeroshot_acc1"] / max(metrics["teacher_zeroshot_acc1"], 1e-9)
    assert metrics["student_teacher_ratio"] == pytest.approx(ratio, abs=1e-3)
    assert metrics["vision_param_ratio"] <= 0.25
    scratch_log = pd.read_csv(layout.train_log("distill_scratch"))
    assert len(scratch_log) == summary.steps
    assert summary.comparison == {k: metrics[k] for k in summary.comparison}


def test_mobileclip_loss_stage_logs_both_terms(reinforced: Layout, tmp_path: Path) -> None:
    layout = _copy_project(reinforced, tmp_path)
    params = reinforce_params(loss="mobileclip", w0=0.5, w1=1.0, compare_scratch=False)
    summary = distill.run(params, layout)
    assert summary.loss == "mobileclip" and summary.teacher_logit_scale == 100.0
    log = pd.read_csv(layout.train_log("distill"))
    assert (log["hard_loss"] > 0).all() and (log["soft_loss"] > 0).all()
    assert (log["loss"] - log["hard_loss"] - log["soft_loss"]).abs().max() < 1e-4
    assert "scratch_zeroshot_acc1" not in summary.comparison
    assert pd.read_csv(layout.train_log("distill_scratch")).empty  # declared plot, no curve


def test_progressive_stages_shrink_and_inherit_from_the_previous(reinforced, tmp_path) -> None:
    layout = _copy_project(reinforced, tmp_path)
    # lr ~ 0: each stage keeps its inherited weights, so the chain of slices is visible.
    params = reinforce_params(progressive=[0.75, 0.5], lr=1e-9, compare_scratch=False)
    summary = distill.run(params, layout)
    stages = summary.stages
    assert [s["vision_cfg"] for s in stages] == [
        {"layers": 3, "width": 96, "head_width": 32},
        {"layers": 2, "width": 64, "head_width": 32},
    ]
    params_per_stage = [s["vision_params"] for s in stages]
    assert params_per_stage[0] > params_per_stage[1] == summary.vision_params
    assert summary.teacher_vision_params > params_per_stage[0]
    assert [s["inherited_from"] for s in stages] == ["teacher", stages[0]["model_name"]]
    assert all(s["steps"] == 24 // 8 for s in stages)
    student = load_model(layout.model_dir("student"))
    assert [s["model_name"] for s in student.card["stages"]] == [s["model_name"] for s in stages]
    t = load_model(layout.model_dir("teacher")).model.state_dict()
    s = student.model.state_dict()
    key = "visual.transformer.resblocks.{}.mlp.c_fc.weight"
    # 4 -> 3 layers keeps teacher blocks [0, 1, 2], then 3 -> 2 keeps [0, 1]: student block 1
    # is teacher block 1 (a direct 4 -> 2 inheritance would have taken block 2).
    assert torch.allclose(s[key.format(1)], t[key.format(1)][:256, :64], atol=1e-6)
    assert not torch.allclose(s[key.format(1)], t[key.format(2)][:256, :64], atol=1e-3)
    assert torch.allclose(s["visual.conv1.weight"], t["visual.conv1.weight"][:64], atol=1e-6)


def test_progressive_must_shrink(reinforced: Layout) -> None:
    with pytest.raises(StageError, match="not fewer"):
        distill.run(reinforce_params(progressive=[0.5, 0.75]), reinforced)


def test_teacher_ensemble_concatenates_members(reinforced: Layout, tmp_path: Path) -> None:
    layout = _copy_project(reinforced, tmp_path)
    second = layout.root / "models" / "teacher2"
    torch.manual_seed(5)
    other = create_model("clipops-vit-xs-minilm", lock_text=True)  # a different architecture
    save_model(other.model, other.name, other.model_cfg, second, {"stage": "teacher"})
    params = reinforce_params(loss="mobileclip", compare_scratch=False)
    params = params.model_copy(
        update={
            "reinforce": params.reinforce.model_copy(
                update={"teachers": ["models/teacher", "models/teacher2"]}
            )
        }
    )
    summary = reinforce.run(params, layout)
    assert summary.teachers == 2 and summary.embed_dim == 512
    single = read_reinforced(reinforced.reinforced_db)
    both = read_reinforced(layout.reinforced_db)
    assert both.member_dims == [256, 256]
    np.testing.assert_allclose(both.view_vectors[..., :256], single.view_vectors, atol=1e-5)
    np.testing.assert_allclose(both.text_vectors[:, :256], single.text_vectors, atol=1e-5)
    norms = np.linalg.norm(both.view_vectors[..., 256:], axis=-1)
    assert np.allclose(norms, 1.0, atol=1e-4)
    result = distill.run(params, layout)
    assert result.teachers == 2 and math.isfinite(result.final_loss)


def test_online_teacher_source_runs_the_teacher_per_batch(reinforced, student_data) -> None:
    data, student, _ = student_data
    teacher = load_model(reinforced.model_dir("teacher"))
    source = OnlineTeacherTensors.build(data, student, [teacher], crop_scale_min=1.0, flip_p=0.0)
    rows = [0, 3]
    batch = source.batch(torch.tensor(rows), torch.Generator().manual_seed(0))
    # crop_scale_min 1 and no flip: the view is the whole image
    expected_img = encode_images(teacher, [data.images[i] for i in rows])
    expected_txt = encode_texts(teacher, [data.captions[i] for i in rows])
    np.testing.assert_allclose(batch["teacher_image"].numpy(), expected_img, atol=1e-4)
    np.testing.assert_allclose(batch["teacher_text"].numpy(), expected_txt, atol=1e-4)
    fresh = OnlineTeacherTensors.build(data, student, [teacher], crop_scale_min=0.5)
    params = reinforce_params(epochs=1).distill
    result = train(
        student.model, fresh, DistillObjective(MobileClipLoss()), params, torch.device("cpu")
    )
    assert math.isfinite(result.final_loss)


def test_batches_sample_real_or_extra_captions(student_data) -> None:
    data, student, _ = student_data
    everything = torch.arange(len(data))
    extras_only = ReinforcedTensors.build(data, student, extra_caption_p=1.0)
    batch = extras_only.batch(everything, torch.Generator().manual_seed(1))
    assert (batch["caption_slot"] >= 1).all()
    for row, slot in enumerate(batch["caption_slot"].tolist()):
        expected = torch.from_numpy(data.extra_vectors[row][slot - 1])
        assert torch.equal(batch["teacher_text"][row], expected)
        caption = data.extra_captions[row][slot - 1]
        pooled = pooled_features(student.model, student.tokenizer, [caption])[0]
        assert torch.allclose(batch["text_pooled"][row], pooled, atol=1e-5)
    real_only = ReinforcedTensors.build(data, student, extra_caption_p=0.0)
    batch = real_only.batch(everything, torch.Generator().manual_seed(1))
    assert (batch["caption_slot"] == 0).all()
    assert torch.equal(batch["teacher_text"], torch.from_numpy(data.text_vectors))
    mixed = ReinforcedTensors.build(data, student, extra_caption_p=0.5)
    slots = torch.cat(
        [
            mixed.batch(everything, torch.Generator().manual_seed(s))["caption_slot"]
            for s in range(10)
        ]
    )
    assert (slots == 0).any() and (slots > 0).any()
    assert set(slots.tolist()) == set(range(6))  # real + all 5 extras get used
