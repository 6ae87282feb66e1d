"""Fine-tuning recipes on real tensors: m2-mix geometry, CleanCLIP views, MoE upcycling, WiSE-FT."""

from __future__ import annotations

import copy
import math
import random

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tasks import finetune
from tasks.errors import StageError
from tasks.finetuning import cleanclip, wise_ft
from tasks.finetuning.m2mix import m2mix_loss, mixup_logits, slerp
from tasks.models import (
    ModelLoadError,
    build_model,
    create_model,
    load_model,
    load_weights,
    save_model,
)
from tasks.models import moe as moe_layers
from tasks.params import FinetuneParams
from tasks.training.objective import objective_loss
from tests.test_trainer import tiny_digits

torch.set_num_threads(2)


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ---------------------------------------------------------------- m2-mix
def test_slerp_unit_norm_endpoints_and_midpoint():
    a, b = unit_rows(8, 16, 0), unit_rows(8, 16, 1)
    for lam in (0.1, 0.3, 0.77):
        assert torch.allclose(slerp(a, b, lam).norm(dim=-1), torch.ones(8), atol=1e-5)
    assert torch.allclose(slerp(a, b, 1.0), a, atol=1e-5)
    assert torch.allclose(slerp(a, b, 0.0), b, atol=1e-5)
    assert torch.allclose(slerp(a, b, 0.5), F.normalize(a + b, dim=-1), atol=1e-5)
    # the geodesic splits the angle in proportion to lambda
    mixed = slerp(a, b, 0.25)
    theta = torch.acos((a * b).sum(-1))
    assert torch.allclose(torch.acos((mixed * b).sum(-1).clamp(-1, 1)), 0.25 * theta, atol=1e-3)
    # parallel rows do not divide by zero
    assert torch.allclose(slerp(a, a, 0.3), a, atol=1e-5)


def test_mixup_logits_structure_and_loss():
    image, text = unit_rows(6, 8, 2), unit_rows(6, 8, 3)
    neg = slerp(image, text, 0.4)
    logits = mixup_logits(image, text, neg)
    for i in range(6):
        for j in range(6):
            want = image[i] @ (text[i] if i == j else neg[j])
            assert torch.isclose(logits[i, j], want, atol=1e-6)
    loss = m2mix_loss(image, text, 0.4, 0.07)
    t = torch.arange(6)
    want = 0.5 * (
        F.cross_entropy(logits / 0.07, t)
        + F.cross_entropy(mixup_logits(text, image, neg) / 0.07, t)
    )
    assert torch.isclose(loss, want)


# ---------------------------------------------------------------- CleanCLIP caption views
def test_caption_views_are_seeded_and_differ():
    caps = ["a small red circle at the top left.", "a photo of the digit seven."]
    views = cleanclip.caption_views(caps, 3, 0.15, 1, seed=0)
    assert views == cleanclip.caption_views(list(reversed(caps)), 3, 0.15, 1, seed=0)[::-1]
    assert all(v != c for c, vs in zip(caps, views, strict=True) for v in vs)
    assert views != cleanclip.caption_views(caps, 3, 0.15, 1, seed=1)
    assert cleanclip.augment_caption("one", random.Random(0), 0.5, 1) == "one"


# ---------------------------------------------------------------- recipes on a real tiny model
@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return create_model("clipops-vit-xs-minilm", lock_text=True)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return tiny_digits(16, "train")


def fresh(base):
    return copy.deepcopy(base)


def prepared(base, rows, name: str, **overrides):
    params = FinetuneParams(recipe=name, **overrides)
    loaded = fresh(base)
    recipe = finetune.get_recipe(name)
    facts = recipe.prepare(loaded, params)
    data = recipe.data(rows, loaded, params)
    return loaded, recipe, params, data, facts


@pytest.mark.parametrize("name", sorted(finetune.RECIPES))
def test_recipe_loss_finite_differentiable_and_decreasing(base, rows, name):
    loaded, recipe, params, data, _ = prepared(base, rows, name)
    model = loaded.model.train()
    objective = recipe.objective(params)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=2e-3)
    losses = []
    for _ in range(6):
        batch = data.batch(torch.arange(len(data)), torch.Generator().manual_seed(0))
        loss, _ = objective_loss(objective, model, batch)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in trainable if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_cleanclip_views_differ_and_inmodal_term_has_gradient(base, rows):
    loaded, _, params, data, _ = prepared(base, rows, "cleanclip")
    batch = data.batch(torch.arange(len(data)), torch.Generator().manual_seed(0))
    assert not torch.allclose(batch["image_view"], batch["image"])
    differs = (batch["text_view_pooled"] - batch["text_pooled"]).abs().sum(dim=1) > 1e-4
    assert differs.all()
    # in-modal term alone: real gradient into the image tower and the text projection
    model = loaded.model.train()
    objective = cleanclip.CleanClipObjective(clip_weight=0.0, inmodal_weight=1.0)
    loss, logs = objective_loss(objective, model, batch)
    loss.backward()
    assert logs["inmodal"] > 0 and loss.item() == pytest.approx(logs["inmodal"], rel=1e-5)
    assert model.visual.conv1.weight.grad.abs().sum() > 0
    assert model.text.proj.weight.grad.abs().sum() > 0


def test_cleanclip_logit_scale_is_clamped(base):
    model = fresh(base).model
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    image, text = unit_rows(4, 256, 0), unit_rows(4, 256, 1)
    feats = {"image": image, "text": text, "image_view": image, "text_view": text}
    loss, _ = cleanclip.CleanClipObjective(1.0, 0.0).loss(model, feats)
    t = torch.arange(4)
    i2t, t2i = 100 * image @ text.T, 100 * text @ image.T
    want = 0.5 * (F.cross_entropy(i2t, t) + F.cross_entropy(t2i, t))
    assert torch.isclose(loss, want, rtol=1e-5)


def test_locked_text_trains_only_the_image_tower(base, rows):
    loaded, *_ = prepared(base, rows, "locked-text")
    trainable = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("visual.") or n == "logit_scale" for n in trainable)
    assert "text.proj.weight" not in trainable


# ---------------------------------------------------------------- MoE upcycling
def test_moe_upcycled_model_equals_dense_and_survives_save_load(base, tmp_path):
    dense = fresh(base)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = dense.model.eval().encode_image(x)
    loaded = fresh(base)
    layout = moe_layers.upcycle_vision(loaded.model, 4, 2, generator=torch.Generator())
    assert layout == {"num_experts": 4, "top_k": 2, "blocks": [0, 1]}
    with torch.no_grad():
        got = loaded.model.eval().encode_image(x)
    assert torch.allclose(got, want, atol=1e-5)
    # make the experts differ so that routing matters, then round-trip through disk
    with torch.no_grad():
        for layer in moe_layers.moe_layers(loaded.model):
            for k, expert in enumerate(layer.experts):
                expert.c_fc.weight.mul_(1 + 0.1 * k)
        before = loaded.model.encode_image(x)
    assert not torch.allclose(before, want, atol=1e-4)
    save_model(loaded.model, loaded.name, loaded.model_cfg, tmp_path / "m", {"stage": "t"})
    back = load_model(tmp_path / "m")
    assert back.card["moe"] == layout
    with torch.no_grad():
        assert torch.equal(back.model.encode_image(x), before)
    # open_clip's strict loader builds dense blocks: the expert weights do not fit (documented)
    dense_again = build_model(loaded.name, loaded.model_cfg)
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_weights(dense_again.model, tmp_path / "m" / "model.safetensors", loaded.name)


def test_moe_balance_is_one_for_a_uniform_router():
    probs = torch.full((12, 4), 0.25)
    top_i = torch.tensor([[0, 1], [2, 3], [0, 2], [1, 3], [0, 1], [2, 3]] * 2)
    assert moe_layers.switch_balance(probs, top_i, 4).item() == pytest.approx(1.0)
    # concentrated routing costs more
    skew = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).expand(12, 4)
    top_skew = torch.tensor([[0, 1]] * 12)
    assert moe_layers.switch_balance(skew, top_skew, 4).item() > 1.0
    # through a real MoE layer with a zero router (exactly uniform probabilities)
    layer = moe_layers.MoEFeedForward(
        [torch.nn.Sequential(torch.nn.Linear(8, 8)) for _ in range(4)], 8, 2
    )
    with torch.no_grad():
        layer.router.weight.zero_()
        layer(torch.randn(3, 7, 8))
    assert layer.last_balance_loss.item() == pytest.approx(1.0)


def test_moe_router_only_trains_routers(base, rows):
    loaded, *_, facts = prepared(base, rows, "moe", moe_train="router")
    trainable = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith("mlp.router.weight") for n in trainable)
    assert facts["moe"]["num_experts"] == 4


# ---------------------------------------------------------------- WiSE-FT
def test_wise_ft_endpoints_are_exact_and_midpoint_is_the_mean(base):
    a = wise_ft.cpu_state(base.model.visual)
    tuned = copy.deepcopy(base.model.visual)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    b = wise_ft.cpu_state(tuned)
    zero, one, half = (wise_ft.interpolate(a, b, x) for x in (0.0, 1.0, 0.5))
    assert all(torch.equal(zero[k], a[k]) for k in a)
    assert all(torch.equal(one[k], b[k]) for k in b)
    key = "conv1.weight"
    assert torch.allclose(half[key], (a[key] + b[key]) / 2)
    with pytest.raises(ValueError, match="only in base"):
        wise_ft.interpolate(a, {k: v for k, v in b.items() if k != key}, 0.5)


def test_wise_ft_choice_rule_prefers_the_smaller_alpha_on_ties():
    def row(alpha, acc, r5):
        m = {"zeroshot_acc1": acc, "image_retrieval_recall@5": r5, "text_retrieval_recall@5": r5}
        return {"alpha": alpha, "val_score": wise_ft.score(m), "val": m, "eval": m}

    rows = [row(1.0, 0.9, 0.5), row(0.5, 0.9, 0.5), row(0.0, 0.8, 0.5)]
    assert wise_ft.choose(rows)["alpha"] == 0.5
    assert wise_ft.score(rows[0]["val"]) == pytest.approx(0.5 * 0.9 + 0.5 * 0.5)
    assert not math.isnan(wise_ft.choose([row(0.0, 0.1, 0.0)])["val_score"])


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(StageError) as err:
        finetune.get_recipe("sgd-magic")
    for name in ("contrastive", "m2mix", "cleanclip", "locked-text", "moe"):
        assert name in str(err.value)
