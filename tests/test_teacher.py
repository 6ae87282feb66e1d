"""teacher stage on a tiny real curated table: writes a loadable model, card, loss CSV."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest
import torch

from tasks import teacher
from tasks.errors import StageError
from tasks.layout import Layout
from tasks.models import (
    create_model,
    encode_images,
    get_model_config,
    load_model,
    save_model,
    sha256_file,
)
from tasks.pair_table import write_pairs
from tasks.params import ParamsError, parse_params
from tests.test_trainer import tiny_digits

torch.set_num_threads(2)
TINY = {"epochs": 1, "batch_size": 16, "warmup_steps": 1}


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Layout:
    root = Layout.at(tmp_path_factory.mktemp("teacher"))
    table = pd.concat([tiny_digits(40, "train"), tiny_digits(12, "eval", seed=1)])
    write_pairs(table, root.curated)
    return root


def test_teacher_stage_writes_a_loadable_model(layout):
    params = parse_params({"device": "cpu", "teacher": {**TINY, "model": "clipops-vit-xs-minilm"}})
    card = teacher.run(params, layout)
    out = layout.model_dir("teacher")
    assert card["stage"] == "teacher" and card["parent"] is None
    assert card["weights_sha256"] == sha256_file(out / "model.safetensors")
    assert card["metrics"]["train_rows"] == 40  # eval rows are not trained on
    assert card["metrics"]["steps"] == 40 // 16
    assert card["params"]["batch_size"] == 16
    loaded = load_model(out, "cpu")
    assert loaded.name == "clipops-vit-xs-minilm" and loaded.card == card
    emb = encode_images(loaded, tiny_digits(3, "eval")["image"].tolist())
    assert emb.shape == (3, 256)
    rows = list(csv.DictReader(layout.train_log("teacher").open()))
    assert len(rows) == card["metrics"]["steps"]


def test_teacher_from_local_pretrained_checkpoint(layout, tmp_path):
    torch.manual_seed(7)
    start = create_model("clipops-vit-xs-minilm")
    ckpt_dir = tmp_path / "ckpt"
    save_model(start.model, start.name, start.model_cfg, ckpt_dir, {"stage": "external"})
    params = parse_params(
        {
            "device": "cpu",
            "teacher": {
                **TINY,
                "model": "clipops-vit-xs-minilm",
                "pretrained": str(ckpt_dir / "model.safetensors"),
                "lr": 1e-9,  # ~no update: the result must still be the checkpoint's weights
            },
        }
    )
    card = teacher.run(params, layout)
    assert card["parent"]["weights_sha256"] == sha256_file(ckpt_dir / "model.safetensors")
    trained = load_model(layout.model_dir("teacher"), "cpu")
    w0 = start.model.visual.conv1.weight
    w1 = trained.model.visual.conv1.weight
    assert torch.allclose(w0, w1, atol=1e-6)
    # a fresh init with the same architecture is far from the checkpoint
    torch.manual_seed(8)
    other = create_model("clipops-vit-xs-minilm").model.visual.conv1.weight
    assert not np.allclose(other.detach().numpy(), w0.detach().numpy(), atol=1e-3)


def test_teacher_errors_are_stage_errors(layout, tmp_path):
    bad = parse_params({"teacher": {**TINY, "pretrained": str(tmp_path / "missing.pt")}})
    with pytest.raises(StageError, match="not found"):
        teacher.run(bad, layout)
    with pytest.raises(StageError, match="unknown model"):
        teacher.run(parse_params({"teacher": {**TINY, "model": "nope"}}), layout)
    with pytest.raises(StageError, match="curate stage"):
        teacher.run(parse_params({"teacher": TINY}), Layout.at(tmp_path / "empty"))


def test_lit_teacher_keeps_the_pretrained_image_tower(layout, tmp_path):
    """LiT: image tower from another checkpoint, locked; the (unlocked) text side learns.

    A small from-scratch text tower keeps the test fast (unlocked MiniLM is 22M parameters)."""
    torch.manual_seed(11)
    start = create_model("clipops-vit-s-text-s")
    ckpt_dir = tmp_path / "image-ckpt"
    save_model(start.model, start.name, start.model_cfg, ckpt_dir, {"stage": "external"})
    params = parse_params(
        {
            "device": "cpu",
            "teacher": {
                **TINY,
                "model": "clipops-vit-s-text-s",
                "pretrained_image": str(ckpt_dir),
                "lock_image": True,
                "lock_text": False,
                "lr": 1e-3,
            },
        }
    )
    card = teacher.run(params, layout)
    assert card["params"]["lock_image"] and not card["params"]["lock_text"]
    assert card["parent"]["image_tower"]["weights_sha256"] == sha256_file(
        ckpt_dir / "model.safetensors"
    )
    trained = load_model(layout.model_dir("teacher"), "cpu").model
    for (name, before), after in zip(
        start.model.visual.state_dict().items(), trained.visual.state_dict().values(), strict=True
    ):
        assert torch.equal(before, after), name
    before_all, after_all = start.model.state_dict(), trained.state_dict()
    moved = {k for k in before_all if not torch.equal(before_all[k], after_all[k])}
    assert moved and not any(k.startswith("visual.") for k in moved)
    assert "text_projection" in moved and any(k.startswith("transformer.") for k in moved)


def test_impossible_lock_combinations_are_refused():
    with pytest.raises(ParamsError, match="both true"):
        parse_params({"teacher": {"lock_image": True, "lock_text": True, "pretrained": "x"}})
    with pytest.raises(ParamsError, match="needs pretrained image weights"):
        parse_params({"teacher": {"lock_image": True, "lock_text": False}})


def test_image_tower_that_does_not_fit_is_a_stage_error(layout, tmp_path):
    torch.manual_seed(12)
    other = create_model("clipops-vit-s-minilm")  # width 128: not the xs image tower
    save_model(other.model, other.name, other.model_cfg, tmp_path / "s", {"stage": "x"})
    params = parse_params(
        {
            "teacher": {
                **TINY,
                "model": "clipops-vit-xs-minilm",
                "pretrained_image": str(tmp_path / "s"),
                "lock_image": True,
                "lock_text": False,
            }
        }
    )
    with pytest.raises(StageError, match="does not fit"):
        teacher.run(params, layout)


def test_teacher_from_a_json_config_path(layout, tmp_path):
    cfg = get_model_config("clipops-vit-xs-minilm")
    cfg["vision_cfg"]["layers"] = 1
    path = tmp_path / "my-tiny-vit.json"
    path.write_text(json.dumps(cfg))
    params = parse_params({"device": "cpu", "teacher": {**TINY, "model": str(path)}})
    card = teacher.run(params, layout)
    assert card["model_name"] == "my-tiny-vit"
    loaded = load_model(layout.model_dir("teacher"), "cpu")
    assert len(loaded.model.visual.transformer.resblocks) == 1
    bad = tmp_path / "bad.json"
    bad.write_text('{"embed_dim": 8}')
    with pytest.raises(StageError, match="vision_cfg"):
        teacher.run(parse_params({"teacher": {**TINY, "model": str(bad)}}), layout)
