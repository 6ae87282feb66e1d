"""The evaluate stage end to end on real eval rows and tiny real (untrained) models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tasks.errors import StageError
from tasks.evaluate import run
from tasks.evaluation.eval_sets import build_eval_sets
from tasks.layout import Layout
from tasks.models import create_model, encode_images, encode_texts, save_model
from tasks.pair_table import read_pairs, write_pairs
from tasks.params import PipelineParams, parse_params
from tasks.sources.digits import load_digit_pairs
from tasks.sources.shapes import generate_shape_pairs
from tasks.sources.textiles import load_textile_pairs

# A from-scratch text tower keeps this test fast; the MiniLM configs go through the same code.
MODEL = "clipops-vit-s-text-s"
DIGITS_PER_CLASS = 10
STAGE_PARAMS = {
    "ingest": {
        "textiles": {"max_images": 60},
        "shapes": {"num_pairs": 200, "exact_duplicates": 0, "near_duplicates": 0},
    },
    "evaluate": {"models": ["teacher", "student"], "recall_at": [1, 5, 10], "batch_size": 128},
    "register": {"stage": "student"},
    "device": "cpu",
}


def _curated_table(params: PipelineParams) -> pd.DataFrame:
    """Real eval rows (digits, textiles, shapes) plus some train rows the stage must ignore."""
    ingest = params.ingest
    results = [
        load_digit_pairs(ingest.digits, params.seed, ingest.max_image_side),
        load_textile_pairs(ingest.textiles, params.seed, min_side=8, max_side=128, max_bytes=10**7),
        generate_shape_pairs(ingest.shapes, params.seed, ingest.max_image_side),
    ]
    df = pd.DataFrame([row for r in results for row in r.pairs])
    train = df[df["split"] == "train"].groupby("source").head(20)
    eval_rows = df[df["split"] == "eval"]
    # 10 eval digits per class keep the test fast on 2 cores; other sources stay whole.
    digits = eval_rows[eval_rows["source"] == "digits"].groupby("label").head(DIGITS_PER_CLASS)
    others = eval_rows[eval_rows["source"] != "digits"]
    df = pd.concat([digits, others, train], ignore_index=True)
    # Two shape eval rows share a caption: neither identifies one image; both must be dropped.
    shapes_eval = df.index[(df["source"] == "shapes") & (df["split"] == "eval")]
    df.loc[shapes_eval[1], "caption"] = df.loc[shapes_eval[0], "caption"]
    return df


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> tuple[Layout, PipelineParams, dict]:
    layout = Layout.at(tmp_path_factory.mktemp("eval") / "project")
    params = parse_params(STAGE_PARAMS)
    write_pairs(_curated_table(params), layout.curated)
    torch.manual_seed(0)
    loaded = create_model(MODEL)  # built once, then perturbed per stage
    for stage in params.evaluate.models:
        save_model(loaded.model, MODEL, loaded.model_cfg, layout.model_dir(stage), {"stage": stage})
        # The next model gets a re-drawn image tower, so the two score differently.
        with torch.no_grad():
            for weight in loaded.model.visual.parameters():
                weight.add_(0.05 * torch.randn_like(weight))
    summary = run(params, layout)
    return layout, params, summary


def test_metrics_file_has_stable_keys_and_near_chance_values(evaluated) -> None:
    layout, params, summary = evaluated
    metrics = json.loads(layout.eval_metrics.read_text())
    assert list(metrics) == ["student", "teacher"]  # sorted keys, both models
    expected = {
        "zeroshot_acc1",
        "zeroshot_acc5",
        "zeroshot_mean_per_class_recall",
        "textiles_zeroshot_acc1",
        "textiles_zeroshot_mean_per_class_recall",
        "alignment",
        "uniformity",
        "uniformity_image",
        "uniformity_text",
        "vision_params",
    } | {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}
    for stage, values in metrics.items():
        assert set(values) == expected, stage
        assert "textiles_zeroshot_acc5" not in values  # 3 classes: top-5 is meaningless
        # Untrained vision towers: accuracy near chance (0.1), far from a trained model.
        assert 0.0 <= values["zeroshot_acc1"] <= 0.3
        assert values["zeroshot_acc1"] <= values["zeroshot_acc5"] <= 1.0
        # 39 retrieval images: chance R@1 ~ 0.026, R@10 ~ 0.26.
        assert values["image_retrieval_recall@1"] <= 0.2
        assert values["image_retrieval_recall@1"] <= values["image_retrieval_recall@10"] <= 0.7
        assert 0.0 <= values["alignment"] <= 4.0 and values["uniformity"] <= 0.0
        assert values["vision_params"] > 0 and isinstance(values["vision_params"], int)
    counts = summary["eval_rows"]
    assert counts["digits"] == 10 * DIGITS_PER_CLASS
    assert counts["retrieval_dropped_repeated_captions"] == 2
    assert counts["retrieval_captions"] == 40 - 2
    assert summary["chance"]["zeroshot_acc1"] == pytest.approx(0.1)


def test_stage_acc1_matches_an_independent_eval_template_classifier(evaluated) -> None:
    """Recompute teacher acc1 with the public encoders and only the eval templates."""
    layout, params, _ = evaluated
    from tasks.models import load_model

    loaded = load_model(layout.model_dir("teacher"), "cpu")
    curated = read_pairs(layout.curated)
    digits = curated[(curated["split"] == "eval") & (curated["source"] == "digits")]
    classnames = sorted(digits["label"].unique())
    templates = params.ingest.digits.eval_templates
    prompts = encode_texts(loaded, [t.format(c) for c in classnames for t in templates])
    weights = prompts.reshape(len(classnames), len(templates), -1).mean(axis=1)
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    pred = (encode_images(loaded, digits["image"].tolist()) @ weights.T).argmax(axis=1)
    truth = np.array([classnames.index(label) for label in digits["label"]])
    reported = json.loads(layout.eval_metrics.read_text())["teacher"]["zeroshot_acc1"]
    assert reported == pytest.approx(float((pred == truth).mean()), abs=2 / len(truth))


def test_plots_and_plot_data_written(evaluated) -> None:
    layout, params, summary = evaluated
    recall = pd.read_csv(layout.plots_dir / "eval_recall.csv")
    assert list(recall.columns) == ["model", "direction", "k", "recall"]
    assert len(recall) == 2 * 2 * 3  # models x directions x k
    metrics = json.loads(layout.eval_metrics.read_text())
    row = recall[(recall.model == "student") & (recall.direction == "text_to_image")]
    assert row[row.k == 5].recall.item() == pytest.approx(
        metrics["student"]["image_retrieval_recall@5"], abs=1e-6
    )
    per_class = pd.read_csv(layout.plots_dir / "eval_per_class.csv")
    assert set(per_class["task"]) == {"digits", "textiles"}
    assert len(per_class) == 2 * (10 + 3)
    for name in ("eval_summary.png", "eval_confusion.png"):
        path = layout.plots_dir / name
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width > 200 and img.height > 200
    assert summary["plots"]["confusion_png"] == "plots/eval_confusion.png"


def test_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path)
    params = parse_params({**STAGE_PARAMS, "evaluate": {"models": ["finetuned"]}})
    with pytest.raises(StageError, match=r"no saved model for \['finetuned'\]"):
        run(params, layout)


def test_broken_model_folder_is_a_clear_error(evaluated, tmp_path: Path) -> None:
    layout, params, _ = evaluated
    broken = Layout.at(tmp_path)
    write_pairs(read_pairs(layout.curated), broken.curated)
    broken.model_dir("teacher").mkdir(parents=True)  # a folder without the model files
    one = parse_params({**STAGE_PARAMS, "evaluate": {"models": ["teacher"]}})
    with pytest.raises(StageError, match="cannot evaluate 'teacher'.*open_clip_config.json"):
        run(one, broken)


def test_eval_sets_need_digits_and_unique_captions(evaluated) -> None:
    layout, params, _ = evaluated
    curated = read_pairs(layout.curated)
    with pytest.raises(StageError, match="no digits eval rows"):
        build_eval_sets(curated[curated["source"] != "digits"], params)
    with pytest.raises(StageError, match="retrieval needs"):
        build_eval_sets(curated[curated["source"] != "shapes"], params)
    no_label = curated.copy()
    no_label.loc[no_label.index[no_label["source"] == "digits"][0], "label"] = None
    with pytest.raises(StageError, match="have no label"):
        build_eval_sets(no_label, params)
    no_textiles = build_eval_sets(curated[curated["source"] != "textiles"], params)
    assert no_textiles.textiles is None
    assert "no textiles eval rows" in no_textiles.skipped["textiles_zeroshot"]
    sets = build_eval_sets(curated, params)
    assert sets.skipped == {}
    assert sets.digits.templates == params.ingest.digits.eval_templates
    assert sets.textiles is not None
    assert sets.textiles.classnames == ["global defect", "local defect", "nominal"]
