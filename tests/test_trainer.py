"""The shared trainer: schedule, optimiser groups, determinism, loss CSV, the loss hook."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from tasks.models import create_model
from tasks.params import DigitsSource, TrainParams
from tasks.training import (
    Augment,
    ClipObjective,
    PairTensors,
    encode_batch_text,
    objective_loss,
    train,
)
from tasks.training.data import is_text_locked
from tasks.training.schedule import lr_at, param_groups

torch.set_num_threads(2)
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def tiny_digits(n: int, split: str = "train", seed: int = 0) -> pd.DataFrame:
    """`n` real sklearn digits as a pair table: 32x32 RGB PNG bytes, template captions."""
    digits = load_digits()
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(digits.images), size=n, replace=False)
    templates = (
        DigitsSource().train_templates if split == "train" else DigitsSource().eval_templates
    )
    rows = []
    for k, i in enumerate(pick):
        arr = (digits.images[i] / 16.0 * 255).astype(np.uint8)
        img = Image.fromarray(arr).resize((32, 32), Image.NEAREST).convert("RGB")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        label = NAMES[digits.target[i]]
        rows.append(
            {
                "id": f"digits-{i}",
                "sha256": str(i),
                "image": buf.getvalue(),
                "width": 32,
                "height": 32,
                "caption": templates[k % len(templates)].format(label),
                "source": "digits",
                "label": label,
                "split": split,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def pairs() -> pd.DataFrame:
    return tiny_digits(48)


def _fresh(name: str = "clipops-vit-xs-minilm", seed: int = 0):
    torch.manual_seed(seed)
    return create_model(name, lock_text=True)


def test_schedule_warms_up_then_decays_to_zero():
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 10, 100) == pytest.approx(0.5)
    assert lr_at(100, 1.0, 10, 100) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(0, 1.0, 0, 10) == pytest.approx(1.0)


def test_no_weight_decay_on_gains_biases_and_logit_scale():
    loaded = _fresh()
    decay, no_decay = param_groups(loaded.model, 0.1)
    names = {id(p): n for n, p in loaded.model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "logit_scale" in no_decay_names
    assert any(n.endswith("ln_1.weight") for n in no_decay_names)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    # the locked MiniLM tower is not in the optimiser at all
    assert not any(
        names[id(p)].startswith("text.transformer") for g in (decay, no_decay) for p in g["params"]
    )


def test_locked_tower_features_match_the_full_text_path(pairs):
    loaded = _fresh()
    assert is_text_locked(loaded.model)
    data = PairTensors.from_frame(pairs, loaded)
    assert data.num_unique_captions == pairs["caption"].nunique() < len(pairs)
    batch = data.batch(torch.arange(8), torch.Generator())
    loaded.model.eval()
    with torch.no_grad():
        fast = encode_batch_text(loaded.model, batch)
        full = loaded.model.encode_text(
            loaded.tokenizer(pairs["caption"][:8].tolist()), normalize=True
        )
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=0)


def test_two_runs_give_identical_weights_and_csv(tmp_path, pairs):
    params = TrainParams(epochs=2, batch_size=16, lr=1e-3, warmup_steps=2, seed=3)
    states, logs = [], []
    for run in range(2):
        loaded = _fresh(seed=3)
        data = PairTensors.from_frame(pairs, loaded, Augment(crop_scale_min=0.7, flip_p=0.5))
        log = tmp_path / f"run{run}.csv"
        result = train(loaded.model, data, ClipObjective(), params, torch.device("cpu"), log)
        states.append(loaded.model.state_dict())
        logs.append(log.read_text())
    assert result.steps == 2 * (48 // 16) and result.samples == 96
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
    assert logs[0] == logs[1]
    rows = list(csv.DictReader(io.StringIO(logs[0])))
    assert list(rows[0]) == ["step", "epoch", "loss", "lr"]
    assert [int(r["step"]) for r in rows] == list(range(6))
    assert [int(r["epoch"]) for r in rows] == [0, 0, 0, 1, 1, 1]
    assert float(rows[0]["lr"]) == pytest.approx(5e-4) and float(rows[1]["lr"]) == pytest.approx(
        1e-3
    )
    assert all(math.isfinite(float(r["loss"])) for r in rows)


def test_a_different_seed_changes_the_weights(pairs):
    params = TrainParams(epochs=1, batch_size=16, warmup_steps=1)
    out = []
    for seed in (0, 1):
        loaded = _fresh(seed=0)
        data = PairTensors.from_frame(pairs, loaded)
        train(
            loaded.model,
            data,
            ClipObjective(),
            params.model_copy(update={"seed": seed}),
            torch.device("cpu"),
        )
        out.append(loaded.model.text.proj.weight.detach().clone())
    assert not torch.equal(out[0], out[1])


def test_training_lowers_the_contrastive_loss(pairs):
    loaded = _fresh()
    data = PairTensors.from_frame(pairs.iloc[:16], loaded)
    fixed = data.batch(torch.arange(16), torch.Generator())
    with torch.no_grad():
        before = objective_loss(ClipObjective(), loaded.model.eval(), fixed)[0].item()
    params = TrainParams(epochs=25, batch_size=16, lr=2e-3, warmup_steps=3)
    train(loaded.model, data, ClipObjective(), params, torch.device("cpu"))
    with torch.no_grad():
        after = objective_loss(ClipObjective(), loaded.model, fixed)[0].item()
    assert after < 0.9 * before, (before, after)  # ln(16) = 2.77 at chance


def test_custom_loss_hook_logs_extra_columns(tmp_path, pairs):
    loaded = _fresh()
    data = PairTensors.from_frame(pairs, loaded)
    calls = []

    class LoggingObjective(ClipObjective):
        def features(self, model, batch):
            calls.append(batch["index"].shape[0])
            return super().features(model, batch)

        def loss(self, model, features):
            loss = super().loss(model, features)
            return loss, {"scale": float(model.logit_scale.detach().exp())}

    log = tmp_path / "loss.csv"
    train(
        loaded.model,
        data,
        LoggingObjective(),
        TrainParams(epochs=1, batch_size=24),
        torch.device("cpu"),
        log,
    )
    assert calls == [24, 24]
    rows = list(csv.DictReader(log.open()))
    assert list(rows[0]) == ["step", "epoch", "loss", "lr", "scale"]
    assert float(rows[0]["scale"]) == pytest.approx(1 / 0.07, rel=0.01)


def test_unlocked_text_tower_trains_from_tokens(pairs):
    torch.manual_seed(0)
    loaded = create_model("clipops-vit-s-text-s")  # CLIP text tower trained from scratch
    data = PairTensors.from_frame(pairs.iloc[:16], loaded)
    assert data.caption_pooled is None
    before = loaded.model.token_embedding.weight.detach().clone()
    train(
        loaded.model,
        data,
        ClipObjective(),
        TrainParams(epochs=1, batch_size=8),
        torch.device("cpu"),
    )
    assert not torch.equal(before, loaded.model.token_embedding.weight)


def test_bad_inputs_are_clear_errors(pairs):
    loaded = _fresh()
    with pytest.raises(ValueError, match="train split is empty"):
        PairTensors.from_frame(pairs.iloc[:0], loaded)
    data = PairTensors.from_frame(pairs.iloc[:1], loaded)
    with pytest.raises(ValueError, match="at least 2"):
        train(loaded.model, data, ClipObjective(), TrainParams(), torch.device("cpu"))
    for p in loaded.model.parameters():
        p.requires_grad = False
    data = PairTensors.from_frame(pairs.iloc[:4], loaded)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(loaded.model, data, ClipObjective(), TrainParams(), torch.device("cpu"))
