"""finetune stage: contrastive fine-tuning of a saved model, card with its parent."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tasks import finetune
from tasks.errors import StageError
from tasks.layout import Layout
from tasks.models import create_model, load_model, save_model, sha256_file
from tasks.pair_table import write_pairs
from tasks.params import parse_params
from tests.test_trainer import tiny_digits

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Layout:
    root = Layout.at(tmp_path_factory.mktemp("finetune"))
    write_pairs(pd.concat([tiny_digits(32, "train"), tiny_digits(8, "eval", 1)]), root.curated)
    torch.manual_seed(0)
    base = create_model("clipops-vit-xs-minilm", lock_text=True)
    save_model(
        base.model, base.name, base.model_cfg, root.model_dir("student"), {"stage": "student"}
    )
    return root


def test_finetune_writes_child_of_base(layout):
    params = parse_params(
        {"device": "cpu", "finetune": {"epochs": 1, "batch_size": 16, "warmup_steps": 1}}
    )
    base = load_model(layout.model_dir("student"), "cpu")
    card = finetune.run(params, layout)
    assert card["stage"] == "finetuned"
    assert card["parent"]["stage"] == "student"
    assert card["parent"]["weights_sha256"] == sha256_file(
        layout.model_dir("student") / "model.safetensors"
    )
    tuned = load_model(layout.model_dir("finetuned"), "cpu")
    assert tuned.name == base.name
    # the image tower and projection moved; the locked MiniLM tower did not
    assert not torch.equal(tuned.model.visual.conv1.weight, base.model.visual.conv1.weight)
    assert not torch.equal(tuned.model.text.proj.weight, base.model.text.proj.weight)
    key = "text.transformer.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(tuned.model.state_dict()[key], base.model.state_dict()[key])
    assert layout.train_log("finetune").exists()


def test_unknown_recipe_and_missing_base(layout, tmp_path):
    with pytest.raises(StageError, match="contrastive"):
        finetune.recipe_objective("no-such-recipe")
    params = parse_params({"finetune": {"base": "teacher"}})
    with pytest.raises(StageError, match="finetune.base='teacher'"):
        finetune.run(params, layout)
