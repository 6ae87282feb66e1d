"""teacher stage on a tiny real curated table: writes a loadable model, card, loss CSV."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest
import torch

from tasks import teacher
from tasks.errors import StageError
from tasks.layout import Layout
from tasks.models import create_model, encode_images, load_model, save_model, sha256_file
from tasks.pair_table import write_pairs
from tasks.params import parse_params
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
