"""finetune stage end to end: every recipe, the WiSE-FT sweep, the card and the MoE folder."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch

from tasks import evaluate, finetune
from tasks.errors import StageError
from tasks.layout import Layout
from tasks.models import create_model, load_model, save_model, sha256_file
from tasks.pair_table import write_pairs
from tasks.params import ShapesSource, parse_params
from tasks.sources.shapes import generate_shape_pairs
from tests.test_trainer import tiny_digits

torch.set_num_threads(2)
WISE = {"wise_ft_alphas": [0.0, 1.0], "wise_ft_val_fraction": 0.25}
FAST = {"epochs": 1, "batch_size": 16, "warmup_steps": 1}


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Layout:
    """Digits (train + eval) and shapes scenes (unique eval captions) and a saved student."""
    root = Layout.at(tmp_path_factory.mktemp("finetune"))
    shapes = generate_shape_pairs(
        ShapesSource(num_pairs=60, heldout_fraction=0.3, exact_duplicates=0, near_duplicates=0),
        seed=0,
        max_side=64,
    )
    rows = pd.concat(
        [tiny_digits(48, "train"), tiny_digits(20, "eval", 1), pd.DataFrame(shapes.pairs)]
    )
    write_pairs(rows.reset_index(drop=True), root.curated)
    torch.manual_seed(0)
    base = create_model("clipops-vit-xs-minilm", lock_text=True)
    save_model(
        base.model, base.name, base.model_cfg, root.model_dir("student"), {"stage": "student"}
    )
    return root


def params_for(recipe: str, **finetune_params):
    return parse_params(
        {"device": "cpu", "finetune": {"recipe": recipe, **FAST, **WISE, **finetune_params}}
    )


def test_finetune_writes_child_of_base(layout):
    params = parse_params({"device": "cpu", "finetune": {**FAST, "wise_ft_alphas": []}})
    base = load_model(layout.model_dir("student"), "cpu")
    card = finetune.run(params, layout)
    assert card["stage"] == "finetuned"
    assert card["parent"]["stage"] == "student"
    assert card["parent"]["weights_sha256"] == sha256_file(
        layout.model_dir("student") / "model.safetensors"
    )
    assert card["metrics"]["train_rows"] == 48 + 42  # no validation slice without WiSE-FT
    assert "wise_ft_alpha" not in card["metrics"]
    tuned = load_model(layout.model_dir("finetuned"), "cpu")
    assert tuned.name == base.name
    # the image tower and projection moved; the locked MiniLM tower did not
    assert not torch.equal(tuned.model.visual.conv1.weight, base.model.visual.conv1.weight)
    assert not torch.equal(tuned.model.text.proj.weight, base.model.text.proj.weight)
    key = "text.transformer.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(tuned.model.state_dict()[key], base.model.state_dict()[key])
    assert layout.train_log("finetune").exists()


def test_contrastive_wise_ft_sweep_saves_the_chosen_alpha(layout):
    card = finetune.run(params_for("contrastive"), layout)
    summary = json.loads(finetune.wise_ft_metrics_path(layout).read_text())
    assert [r["alpha"] for r in summary["sweep"]] == [0.0, 1.0]
    assert summary["alpha"] == card["metrics"]["wise_ft_alpha"] == card["wise_ft"]["alpha"]
    assert summary["chosen_val_score"] == max(r["val_score"] for r in summary["sweep"])
    assert summary["zero_shot_eval"] == summary["sweep"][0]["eval"]
    assert card["metrics"]["train_rows"] < 90  # the validation slice was held out
    # the saved weights are those of the chosen alpha (alpha 0 = the base, bit for bit)
    saved = load_model(layout.model_dir("finetuned"))
    base = load_model(layout.model_dir("student"))
    same = torch.equal(saved.model.visual.conv1.weight, base.model.visual.conv1.weight)
    assert same == (summary["alpha"] == 0.0)
    assert (layout.plots_dir / "wise_ft.png").stat().st_size > 0
    assert (layout.plots_dir / "wise_ft.csv").read_text().startswith("alpha,val_score,")


@pytest.mark.slow
def test_moe_recipe_is_evaluable_and_alpha_zero_matches_the_evaluate_stage(layout, tmp_path):
    params = params_for("moe")
    card = finetune.run(params, layout)
    assert card["moe"] == {"num_experts": 4, "top_k": 2, "blocks": [0, 1]}
    assert card["metrics"]["wise_ft_alpha"] in (0.0, 1.0)
    loaded = load_model(layout.model_dir("finetuned"))
    assert len([m for m in loaded.model.modules() if type(m).__name__ == "MoEFeedForward"]) == 2
    p = params.model_copy(deep=True)
    p.evaluate.models = ["finetuned", "student"]
    metrics = evaluate.run(p, layout)["metrics"]
    assert 0.0 <= metrics["finetuned"]["zeroshot_acc1"] <= 1.0
    # alpha = 0 of an upcycled model computes the dense base: the sweep's alpha-0 row
    # equals the evaluate stage's figures for the student
    zero = json.loads(finetune.wise_ft_metrics_path(layout).read_text())["zero_shot_eval"]
    for key in ("image_retrieval_recall@5", "text_retrieval_recall@5", "alignment"):
        assert zero[key] == pytest.approx(metrics["student"][key], abs=1e-5)
    # same classifier math (averaged normalised prompt embeddings); float noise may flip one
    assert zero["zeroshot_acc1"] == pytest.approx(metrics["student"]["zeroshot_acc1"], abs=1 / 20)
    # the registry rebuilds a folder from its config + card: the card alone carries the layout
    copy = tmp_path / "registered"
    shutil.copytree(layout.model_dir("finetuned"), copy)
    config = json.loads((copy / "open_clip_config.json").read_text())
    config.pop("moe")
    (copy / "open_clip_config.json").write_text(json.dumps(config))
    again = load_model(copy)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.model.encode_image(x), loaded.model.encode_image(x))


@pytest.mark.parametrize("recipe", ["m2mix", "cleanclip", "locked-text", "moe"])
def test_recipe_runs_end_to_end(layout, recipe):
    card = finetune.run(params_for(recipe), layout)
    assert card["params"]["recipe"] == recipe
    assert card["metrics"]["wise_ft_alpha"] in (0.0, 1.0)
    loaded = load_model(layout.model_dir("finetuned"))
    assert loaded.card["weights_sha256"] == card["weights_sha256"]
    logged = pd.read_csv(layout.train_log("finetune"))
    assert logged["loss"].notna().all()
    if recipe == "cleanclip":
        assert {"clip", "inmodal"} <= set(logged.columns)
    if recipe == "m2mix":
        assert {"clip", "m2mix", "lambda"} <= set(logged.columns)
    if recipe == "moe":
        assert "aux_moe_balance" in logged.columns and loaded.card["moe"]["num_experts"] == 4


def test_unknown_recipe_and_missing_base(layout):
    with pytest.raises(StageError, match="contrastive"):
        finetune.recipe_objective("no-such-recipe")
    params = parse_params({"finetune": {"base": "teacher"}})
    with pytest.raises(StageError, match="finetune.base='teacher'"):
        finetune.run(params, layout)


def test_too_small_validation_slice_is_a_clear_error(layout):
    params = params_for("contrastive", wise_ft_val_fraction=0.01)
    with pytest.raises(StageError, match="wise_ft_val_fraction"):
        finetune.run(params, layout)
