"""The register stage end to end on a tiny real model, real SQLite, real LanceDB."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageDraw
from sqlalchemy import func, select

from storage.artifacts import ArtifactStore
from storage.embeddings import EmbeddingStore
from storage.registry import Registry
from storage.registry_schema import (
    AliasRow,
    DatasetRow,
    GateResultRow,
    LineageRow,
    MetricRow,
    ModelRow,
)
from tasks import register
from tasks.errors import StageError
from tasks.layout import Layout
from tasks.pair_table import write_pairs
from tasks.params import PipelineParams, parse_params

MODEL = "clipops-vit-xs-minilm"
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220)}
SHAPES = ("circle", "square")


def shape_png(colour: str, shape: str, offset: int) -> bytes:
    """A real 32x32 PNG of one coloured shape (offset makes each image's bytes unique)."""
    img = Image.new("RGB", (32, 32), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    box = (4 + offset, 4 + offset, 22 + offset, 22 + offset)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_pairs() -> pd.DataFrame:
    """12 pairs with unique captions (one of them with a quote), 4 held out for eval."""
    rows = []
    for i, (colour, shape, offset) in enumerate(
        (c, s, o) for c in COLOURS for s in SHAPES for o in (0, 6)
    ):
        data = shape_png(colour, shape, offset)
        caption = f"a {colour} {shape} {'in the corner' if offset else 'near the centre'}"
        if i == 0:
            caption = "a red circle that's 'quoted' near the centre"
        rows.append(
            {
                "id": f"shapes-{i:03d}",
                "sha256": hashlib.sha256(data).hexdigest(),
                "image": data,
                "width": 32,
                "height": 32,
                "caption": caption,
                "source": "shapes",
                "label": shape,
                "split": "eval" if i % 3 == 0 else "train",
            }
        )
    return pd.DataFrame(rows)


_BASE: dict = {}


def base_model():
    """One untrained repo model per test process (building MiniLM costs seconds on 2 cores)."""
    if "loaded" not in _BASE:
        from tasks.models import create_model

        _BASE["loaded"] = create_model(MODEL)
    return _BASE["loaded"]


def save_stage_model(layout: Layout, stage: str, parent: dict | None, seed: int) -> str:
    """Save the base model as `stage` with logit_scale = seed (distinct weights per seed)."""
    import torch

    from tasks.models import save_model

    loaded = base_model()
    with torch.no_grad():
        loaded.model.logit_scale.fill_(float(seed))
    card = save_model(
        loaded.model,
        MODEL,
        loaded.model_cfg,
        layout.model_dir(stage),
        {"stage": stage, "parent": parent, "params": {"epochs": 1, "seed": seed}},
    )
    return card["weights_sha256"]


def write_eval_outputs(layout: Layout, acc1: float, passed: bool) -> None:
    metrics = {
        stage: {"zeroshot_acc1": acc1, "image_retrieval_recall@1": acc1 / 2, "per_class": [1, 2]}
        for stage in ("student", "finetuned")
    }
    layout.eval_metrics.parent.mkdir(parents=True, exist_ok=True)
    layout.eval_metrics.write_text(json.dumps(metrics))
    gate_dir = layout.gate_dir("eval")
    gate_dir.mkdir(parents=True, exist_ok=True)
    (gate_dir / "summary.json").write_text(json.dumps({"gate": "eval", "passed": passed}))


def build_project(root: Path, seed: int = 0) -> tuple[Layout, PipelineParams]:
    """A project root with curated + pair tables, student -> finetuned models, metrics, gate."""
    layout = Layout.at(root)
    pairs = make_pairs()
    write_pairs(pairs, layout.pairs)
    write_pairs(pairs.drop(index=5), layout.curated)  # curation dropped one pair
    student_sha = save_stage_model(layout, "student", None, seed)
    save_stage_model(layout, "finetuned", {"stage": "student", "weights_sha256": student_sha},
                     seed + 1)  # fmt: skip
    write_eval_outputs(layout, acc1=0.6, passed=True)
    params = parse_params({"device": "cpu", "register": {"batch_size": 8, "keep_versions": 1}})
    return layout, params


def count(registry: Registry, table: type) -> int:
    with registry._tx() as s:
        return s.scalar(select(func.count()).select_from(table))


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Layout, PipelineParams, dict]:
    layout, params = build_project(tmp_path_factory.mktemp("register") / "project")
    summary = register.run(params, layout)
    return layout, params, summary


def test_register_records_model_lineage_metrics_and_embeddings(registered) -> None:
    layout, params, summary = registered
    assert json.loads(layout.registration.read_text()) == json.loads(json.dumps(summary))
    assert summary["model_version"] == 2 and summary["stage"] == "finetuned"
    assert [c["stage"] for c in summary["chain"]] == ["student", "finetuned"]
    assert summary["alias_moved"] and summary["production_version"] == 2
    assert summary["embedding_rows_written"] == {"image": 11, "text": 11}

    registry = Registry.from_params(params.storage, layout.root)
    model = registry.get_alias("clipops-clip", "production")
    assert model.version == 2 and model.parent_version == 1
    assert (
        model.weights_sha256
        == json.loads((layout.model_dir("finetuned") / "card.json").read_text())["weights_sha256"]
    )
    assert model.metrics == {"zeroshot_acc1": 0.6, "image_retrieval_recall@1": 0.3}
    assert sorted(summary["metrics_not_numeric"]) == ["finetuned.per_class", "student.per_class"]
    assert model.model_cfg["embed_dim"] == 256 and model.preprocess_cfg["size"] in (32, [32, 32])
    assert model.data_hashes["curated"] == hashlib.sha256(layout.curated.read_bytes()).hexdigest()
    assert model.code_version is None or len(model.code_version) >= 40
    tree = registry.lineage(2, "clipops-clip")
    assert {d.name: d.num_rows for _, d in tree.datasets} == {"curated": 11, "pairs": 12}
    assert tree.parents[0][1].model.stage == "student"
    assert registry.get_run(summary["run_id"])["status"] == "succeeded"
    assert ArtifactStore.from_params(params.storage, layout.root).exists(model.weights_sha256)

    store = EmbeddingStore.from_params(params.storage, layout.root)
    assert store.count(model_name="clipops-clip", model_version=2) == 22
    assert store.count(model_name="clipops-clip", model_version=1) == 0  # ancestors: no vectors


def test_rerun_is_idempotent(registered) -> None:
    layout, params, first = registered
    registry = Registry.from_params(params.storage, layout.root)
    tables = (ModelRow, MetricRow, AliasRow, DatasetRow, LineageRow, GateResultRow)
    before = {t.__tablename__: count(registry, t) for t in tables}
    second = register.run(params, layout)
    assert second["model_version"] == first["model_version"] and not second["new_version"]
    assert second["embeddings_already_present"]
    assert {t.__tablename__: count(registry, t) for t in tables} == before
    store = EmbeddingStore.from_params(params.storage, layout.root)
    assert store.count(model_name="clipops-clip") == 22


def test_failed_gate_keeps_production_and_cleanup_protects_it(registered, tmp_path: Path) -> None:
    # continue from a copy of the registered project (v2 in production), not the shared one
    shutil.copytree(registered[0].root, tmp_path / "p")
    layout, params = Layout.at(tmp_path / "p"), registered[1]
    for seed in (20, 30):  # two new finetuned models that both fail the gate
        sha = json.loads((layout.model_dir("student") / "card.json").read_text())["weights_sha256"]
        save_stage_model(layout, "finetuned", {"stage": "student", "weights_sha256": sha}, seed)
        write_eval_outputs(layout, acc1=0.1, passed=False)
        out = register.run(params, layout)
        assert not out["alias_moved"] and out["alias_reason"] == "the eval gate failed"
    assert out["model_version"] == 4 and out["production_version"] == 2
    assert out["embedding_versions_removed"] == [3]
    store = EmbeddingStore.from_params(params.storage, layout.root)
    # keep_versions=1 keeps v4; v3 goes; production v2 is protected
    assert store.versions("clipops-clip") == [2, 4]
    registry = Registry.from_params(params.storage, layout.root)
    assert registry.production_metrics("clipops-clip")["zeroshot_acc1"] == 0.6


def test_missing_inputs_are_clear_errors(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path / "empty")
    params = parse_params({"device": "cpu"})
    with pytest.raises(StageError, match="lacks model.safetensors, open_clip_config.json"):
        register.run(params, layout)
    layout, params = build_project(tmp_path / "p")
    layout.eval_metrics.write_text(json.dumps({"teacher": {"zeroshot_acc1": 1.0}}))
    with pytest.raises(StageError, match="no metrics for 'finetuned'"):
        register.run(params, layout)
    write_eval_outputs(layout, 0.5, True)
    (layout.gate_dir("eval") / "summary.json").write_text(json.dumps({"gate": "eval"}))
    with pytest.raises(StageError, match="no boolean 'passed'"):
        register.run(params, layout)
    assert not Path(layout.root, "store").exists()  # nothing was written on bad input
