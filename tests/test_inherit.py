"""TinyCLIP manual weight inheritance on real open_clip models built from the repo configs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tasks.distillation.configs import scaled_config
from tasks.distillation.inherit import (
    HeadLayout,
    inherit_weights,
    interval_front,
    slice_out_proj,
    slice_qkv,
)
from tasks.models.factory import create_model, vision_parameters
from tasks.models.zoo import get_model_config

TEACHER = "clipops-vit-s-minilm"  # 4 layers, width 128, 4 heads of 32
STUDENT = "clipops-vit-xs-minilm"  # 2 layers, width 64, 2 heads of 32


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    torch.manual_seed(1)
    model = create_model(TEACHER).model.eval()
    # A trained teacher has no zero biases or unit LayerNorms: randomise every tensor so a
    # test cannot pass by comparing two default initialisations.
    with torch.no_grad():
        for p in model.visual.parameters():
            p.copy_(torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def inherited(teacher: nn.Module):
    torch.manual_seed(2)
    student = create_model(STUDENT).model.eval()
    report = inherit_weights(teacher, student)
    return student, report


@pytest.mark.parametrize(
    ("teacher_depth", "student_depth", "expected"),
    [(4, 2, [0, 2]), (12, 3, [0, 4, 8]), (4, 4, [0, 1, 2, 3]), (5, 2, [0, 2]), (2, 3, [0, 1, -1])],
)
def test_interval_front(teacher_depth: int, student_depth: int, expected: list[int]) -> None:
    assert interval_front(teacher_depth, student_depth) == expected


def test_interval_front_rejects_empty_depth() -> None:
    with pytest.raises(ValueError, match="depths must be"):
        interval_front(0, 2)


def test_layer_map_and_counts(inherited) -> None:
    student, report = inherited
    assert report.layer_map["visual.transformer.resblocks"] == [0, 2]
    assert report.initialised == {}
    assert len(report.copied) + len(report.sliced) == len(student.state_dict())
    assert report.to_dict()["inherited_fraction"] == 1.0


def test_blocks_come_from_interval_layers(teacher: nn.Module, inherited) -> None:
    student, _ = inherited
    t, s = teacher.state_dict(), student.state_dict()
    for s_idx, t_idx in [(0, 0), (1, 2)]:
        sp, tp = f"visual.transformer.resblocks.{s_idx}", f"visual.transformer.resblocks.{t_idx}"
        assert torch.equal(s[f"{sp}.ln_1.weight"], t[f"{tp}.ln_1.weight"][:64])
        assert torch.equal(s[f"{sp}.mlp.c_fc.weight"], t[f"{tp}.mlp.c_fc.weight"][:256, :64])
        assert torch.equal(s[f"{sp}.mlp.c_proj.bias"], t[f"{tp}.mlp.c_proj.bias"][:64])
        # q, k and v each keep their own first two heads: rows 0:64 of each 128-row block.
        s_qkv, t_qkv = s[f"{sp}.attn.in_proj_weight"], t[f"{tp}.attn.in_proj_weight"]
        for part in range(3):
            assert torch.equal(
                s_qkv[part * 64 : (part + 1) * 64], t_qkv[part * 128 : part * 128 + 64, :64]
            )
        s_b, t_b = s[f"{sp}.attn.in_proj_bias"], t[f"{tp}.attn.in_proj_bias"]
        assert torch.equal(s_b[64:128], t_b[128:192])  # k bias, not the tail of q


def test_outside_blocks_front_sliced(teacher: nn.Module, inherited) -> None:
    student, report = inherited
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["visual.conv1.weight"], t["visual.conv1.weight"][:64])
    assert torch.equal(s["visual.positional_embedding"], t["visual.positional_embedding"][:, :64])
    assert torch.equal(s["visual.proj"], t["visual.proj"][:64])
    assert report.sliced["visual.proj"] == ("visual.proj", (128, 256), (64, 256))


def test_shared_text_tower_copied_as_is(teacher: nn.Module, inherited) -> None:
    student, report = inherited
    t, s = teacher.state_dict(), student.state_dict()
    text_keys = [k for k in s if k.startswith("text.")]
    assert text_keys and all(report.copied.get(k) == k for k in text_keys)
    assert all(torch.equal(s[k], t[k]) for k in text_keys)
    assert report.copied["logit_scale"] == "logit_scale"


def test_student_is_smaller_and_runs(teacher: nn.Module, inherited) -> None:
    student, _ = inherited
    assert vision_parameters(student) <= 0.5 * vision_parameters(teacher)
    with torch.no_grad():
        feats = student.encode_image(torch.randn(2, 3, 32, 32), normalize=True)
    assert feats.shape == (2, 256) and torch.isfinite(feats).all()


def test_same_config_inherits_an_identical_model(teacher: nn.Module) -> None:
    clone = create_model(TEACHER).model.eval()
    report = inherit_weights(teacher, clone)
    assert not report.sliced and not report.initialised
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(clone.encode_image(images), teacher.encode_image(images))


def test_wider_student_tensors_are_reported_not_dropped() -> None:
    small = nn.Sequential(nn.Linear(4, 4))
    wide = nn.Sequential(nn.Linear(4, 8))
    report = inherit_weights(small, wide)
    assert set(report.initialised) == {"0.weight", "0.bias"}
    assert "not inheritable" in report.initialised["0.weight"]


def test_head_slicing_with_narrower_heads() -> None:
    """Student heads narrower than the teacher's: each kept head keeps its first channels."""
    teacher, student = HeadLayout(num_heads=3, head_dim=4), HeadLayout(num_heads=2, head_dim=2)
    w = torch.arange(36 * 12, dtype=torch.float32).reshape(36, 12)
    got = slice_qkv(w, teacher, student, (12, 6))
    # k (part 1), head 1, row 0 of the student = teacher row 12 + 4 + 0, columns 0..5.
    assert torch.equal(got[4 + 2], w[12 + 4, :6])
    out = torch.arange(12 * 12, dtype=torch.float32).reshape(12, 12)
    got_out = slice_out_proj(out, teacher, student, (6, 4))
    # student input channel 2 = head 1, channel 0 = teacher input channel 4.
    assert torch.equal(got_out[:, 2], out[:6, 4])
    with pytest.raises(ValueError, match="exceed"):
        slice_qkv(torch.zeros(12, 6), student, teacher, (36, 12))


def tinyclip_qkv_reference(v: torch.Tensor, head_dim: int, heads: int, dim: int) -> torch.Tensor:
    """TinyCLIP weight_inherit's formula for a fused in-projection, written out by hand."""
    teacher_heads = v.shape[0] // (3 * head_dim)
    if v.dim() == 2:
        grid = v.view(3, teacher_heads, head_dim, v.shape[1])
        return grid[:, :heads, :, :dim].reshape(3 * heads * head_dim, dim)
    return v.view(3, teacher_heads, head_dim)[:, :heads].reshape(-1)


def test_qkv_slicing_equals_the_reference_formula_on_a_hand_made_tensor() -> None:
    # 4 teacher heads of width 3, input 12 -> 2 student heads, input 6. Every entry distinct.
    w = torch.arange(3 * 4 * 3 * 12, dtype=torch.float32).reshape(36, 12)
    b = torch.arange(36, dtype=torch.float32)
    t, s = HeadLayout(num_heads=4, head_dim=3), HeadLayout(num_heads=2, head_dim=3)
    got_w = slice_qkv(w, t, s, (18, 6))
    got_b = slice_qkv(b, t, s, (18,))
    assert torch.equal(got_w, tinyclip_qkv_reference(w, 3, 2, 6))
    assert torch.equal(got_b, tinyclip_qkv_reference(b, 3, 2, 6))
    # Spelled out: the student's k block starts at teacher row 12 (q holds 4 heads x 3 rows).
    assert torch.equal(got_b[6:12], torch.arange(12, 18, dtype=torch.float32))
    assert torch.equal(got_w[6], w[12, :6])
    # A plain front slice would have taken q rows for k: the head view matters.
    assert not torch.equal(got_w, w[:18, :6])


def test_out_projection_with_whole_heads_is_the_front_slice() -> None:
    """TinyCLIP front-slices out_proj; with head_width kept that equals our per-head slice."""
    out = torch.randn(12, 12)
    t, s = HeadLayout(num_heads=4, head_dim=3), HeadLayout(num_heads=2, head_dim=3)
    assert torch.equal(slice_out_proj(out, t, s, (6, 6)), out[:6, :6])


def test_inherited_student_computes_with_sliced_tensors_only(teacher: nn.Module, inherited):
    """Every sliced student tensor is exactly the front (or per-head) slice of its source."""
    student, report = inherited
    t = teacher.state_dict()
    s = student.state_dict()
    for s_key, (t_key, _, shape) in report.sliced.items():
        if "in_proj" in s_key:
            continue  # head-structured, checked against the reference formula above
        assert torch.equal(s[s_key], t[t_key][tuple(slice(0, n) for n in shape)]), s_key


def test_scaled_configs_keep_head_width_and_text_tower() -> None:
    teacher_cfg = get_model_config(TEACHER)
    half = scaled_config(teacher_cfg, 0.5)
    xs = get_model_config(STUDENT)
    for key in ("layers", "width", "head_width", "patch_size", "image_size"):
        assert half["vision_cfg"][key] == xs["vision_cfg"][key], key  # 0.5 x s == xs
    assert half["text_cfg"] == teacher_cfg["text_cfg"] and half["embed_dim"] == 256
    three_quarters = scaled_config(teacher_cfg, 0.75)["vision_cfg"]
    assert (three_quarters["layers"], three_quarters["width"]) == (3, 96)  # 3 heads of 32
    tiny = scaled_config(teacher_cfg, 0.01)["vision_cfg"]
    assert (tiny["layers"], tiny["width"]) == (1, 32)  # never below one layer, one head
    assert teacher_cfg["vision_cfg"]["width"] == 128  # the teacher's config is not modified
    with pytest.raises(ValueError, match="ViT"):
        scaled_config({"vision_cfg": {"layers": [3, 4, 6, 3], "width": 64}}, 0.5)
