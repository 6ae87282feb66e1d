"""Gradient accumulation: micro-batches add up to the one-batch gradient, for any Objective."""

from __future__ import annotations

import pytest
import torch

from tasks.errors import StageError
from tasks.params import TrainParams
from tasks.training import ClipObjective, train
from tasks.training.distributed import World
from tasks.training.gradients import cached_backward, simple_backward, slice_batch
from tasks.training.row_random import row_uniforms
from tests.tiny_training import run_variant, tiny_clip, tiny_pairs, worker_params

torch.set_num_threads(2)
CPU = torch.device("cpu")
ONE = World(rank=0, size=1, device=CPU)


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_row_uniforms_do_not_depend_on_the_rest_of_the_batch():
    rows = torch.tensor([5, 17, 3, 40, 8, 21])
    whole = row_uniforms(torch.Generator().manual_seed(9), rows, 5)
    parts = [row_uniforms(torch.Generator().manual_seed(9), rows[i : i + 2], 5) for i in (0, 2, 4)]
    assert torch.equal(whole, torch.cat(parts))
    assert whole.min() >= 0 and whole.max() < 1 and whole.std() > 0.1
    other = row_uniforms(torch.Generator().manual_seed(10), rows, 5)
    assert not torch.equal(whole, other)


def test_augmented_rows_are_the_same_in_any_slice():
    data = tiny_pairs(16, augment=True)
    index = torch.arange(16).flip(0)
    whole = data.batch(index, torch.Generator().manual_seed(3))["image"]
    half = data.batch(index[8:], torch.Generator().manual_seed(3))["image"]
    assert torch.equal(whole[8:], half)
    assert not torch.equal(whole, data.batch(index, torch.Generator().manual_seed(4))["image"])


def test_four_micro_batches_give_the_one_batch_gradient_logit_scale_counted_once():
    data = tiny_pairs(32, augment=True)
    batch = data.batch(torch.arange(32), torch.Generator().manual_seed(0))
    model = tiny_clip(0)
    simple_backward(model, ClipObjective(), batch, CPU)
    full = _grads(model)
    model.zero_grad(set_to_none=True)
    micro = [slice_batch(batch, j * 8, (j + 1) * 8) for j in range(4)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    losses = cached_backward(model, ClipObjective(), micro, ONE, trainable)
    accum = _grads(model)
    assert accum.keys() == full.keys()
    for name in full:
        torch.testing.assert_close(accum[name], full[name], atol=1e-6, rtol=1e-4, msg=name)
    # open_clip's scheme would give 4x the logit_scale gradient here
    torch.testing.assert_close(accum["logit_scale"], full["logit_scale"], atol=1e-7, rtol=1e-5)
    assert losses.loss.item() == pytest.approx(torch.log(torch.tensor(32.0)).item(), rel=0.2)


class AuxObjective(ClipObjective):
    """Contrastive loss plus a per-sample-mean aux term (like an MoE balance loss)."""

    def features(self, model, batch):
        out = super().features(model, batch)
        out["aux_norm"] = 0.1 * out["image"].pow(2).sum(-1).mean()
        out["teacher"] = batch["image"].flatten(1)[:, :4]  # a pass-through per-sample tensor
        return out

    def loss(self, model, features):
        assert "aux_norm" not in features and features["teacher"].shape[1] == 4
        return super().loss(model, features), {"n": float(len(features["image"]))}


def test_aux_terms_and_pass_through_features_accumulate_by_share():
    data = tiny_pairs(16)
    batch = data.batch(torch.arange(16), torch.Generator())
    model = tiny_clip(1)
    one = simple_backward(model, AuxObjective(), batch, CPU)
    full = _grads(model)
    model.zero_grad(set_to_none=True)
    micro = [slice_batch(batch, j * 4, (j + 1) * 4) for j in range(4)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    four = cached_backward(model, AuxObjective(), micro, ONE, trainable)
    for name, grad in _grads(model).items():
        torch.testing.assert_close(grad, full[name], atol=1e-6, rtol=1e-4, msg=name)
    assert four.logs["n"] == 16.0  # the loss saw the whole batch, not a micro-batch
    torch.testing.assert_close(four.aux["aux_norm"], one.aux["aux_norm"], atol=1e-6, rtol=1e-5)


def test_accum_4_ends_with_the_weights_of_accum_1():
    """A few AdamW steps, augmentation on: accumulation changes float order only."""
    one = run_variant("rowwise", worker_params(32, 2, accum=1), None, rows=64).state_dict()
    four = run_variant("rowwise", worker_params(32, 2, accum=4), None, rows=64).state_dict()
    diff = _max_abs_diff(one, four)
    print(f"max |w(accum=4) - w(accum=1)| = {diff:.2e}")
    for key in one:
        torch.testing.assert_close(four[key], one[key], atol=2e-5, rtol=0, msg=key)
    start = tiny_clip(7).state_dict()
    assert _max_abs_diff(one, start) > 1e-3  # the steps did move the weights


def test_batch_that_does_not_split_is_a_clear_error():
    with pytest.raises(ValueError, match="not divisible by accum_steps=3"):
        TrainParams(batch_size=32, accum_steps=3)
    data = tiny_pairs(10)
    # 10 rows < batch 8x... : the batch shrinks to a multiple of accum_steps that fits
    result = train(tiny_clip(0), data, ClipObjective(), worker_params(16, 1, accum=4), CPU)
    assert result.samples == 8 and result.steps == 1 and result.accum_steps == 4
    with pytest.raises(StageError, match="cannot fill one batch"):
        train(tiny_clip(0), tiny_pairs(3), ClipObjective(), worker_params(16, 1, accum=4), CPU)
