"""One small end-to-end run of every stage, then the same run through the Prefect flow.

The direct run calls each stage's `run()` in pipeline order, exactly as `dvc repro` does via
`python -m tasks.<stage>`; the flow run goes through Prefect's test harness (a real temporary
API server). Both must produce identical data, identical weights and identical metrics.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import pandas as pd
import pytest

from flows.pipeline import STAGES
from tasks.layout import Layout
from tasks.params import PipelineParams, parse_params
from tests.conftest import TINY_PARAMS

MODEL_STAGES = ("teacher", "student", "finetuned")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_all_stages(params: PipelineParams, layout: Layout) -> None:
    for stage in STAGES:
        importlib.import_module(f"tasks.{stage}").run(params, layout)


@pytest.fixture(scope="module")
def direct_run(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    layout = Layout.at(tmp_path_factory.mktemp("direct"))
    run_all_stages(parse_params(TINY_PARAMS), layout)
    return layout


def test_every_stage_writes_its_declared_outputs(direct_run: Layout) -> None:
    layout = direct_run
    for path in (
        layout.pairs,
        layout.quarantine,
        layout.curated,
        layout.curation_report,
        layout.eval_metrics,
        layout.registration,
    ):
        assert path.exists(), path
    for stage in MODEL_STAGES:
        assert (layout.model_dir(stage) / "model.safetensors").exists()
    for gate in ("raw", "curated", "eval"):
        summary = json.loads((layout.gate_dir(gate) / "summary.json").read_text())
        assert summary["passed"] is True


def test_curation_accounting_adds_up(direct_run: Layout) -> None:
    report = json.loads(direct_run.curation_report.read_text())
    kept = sum(report["kept"].values())
    assert report["rows_in"] == kept + sum(report["filtered"].values()) + sum(
        report["quarantined"].values()
    )
    curated = pd.read_parquet(direct_run.curated, columns=["split"])
    assert kept == len(curated)


def test_metrics_cover_all_three_models(direct_run: Layout) -> None:
    metrics = json.loads(direct_run.eval_metrics.read_text())
    assert set(metrics) == set(MODEL_STAGES)
    for values in metrics.values():
        assert 0.0 <= values["zeroshot_acc1"] <= 1.0
        assert 0.0 <= values["image_retrieval_recall@5"] <= 1.0
    assert metrics["student"]["vision_params"] <= 0.5 * metrics["teacher"]["vision_params"]


def test_registered_model_is_production_and_searchable(direct_run: Layout) -> None:
    from storage.embeddings import EmbeddingStore
    from storage.registry import Registry

    params = parse_params(TINY_PARAMS)
    registry = Registry.from_params(params.storage, direct_run.root)
    production = registry.get_alias(params.register.model_name, "production")
    assert production is not None
    registration = json.loads(direct_run.registration.read_text())
    assert registration["model_version"] == production.version
    store = EmbeddingStore.from_params(params.storage, direct_run.root)
    assert store.count(model_name=params.register.model_name) > 0


def test_prefect_flow_gives_the_same_outputs(direct_run: Layout, tmp_path: Path) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import clip_pipeline

    flow_root = tmp_path / "flow"
    with prefect_test_harness(server_startup_timeout=120):
        clip_pipeline(params=parse_params(TINY_PARAMS), root=str(flow_root))
    flow_layout = Layout.at(flow_root)
    assert _sha(flow_layout.pairs) == _sha(direct_run.pairs)
    assert _sha(flow_layout.curated) == _sha(direct_run.curated)
    for stage in MODEL_STAGES:
        weights = "model.safetensors"
        assert _sha(flow_layout.model_dir(stage) / weights) == _sha(
            direct_run.model_dir(stage) / weights
        ), stage
    assert json.loads(flow_layout.eval_metrics.read_text()) == json.loads(
        direct_run.eval_metrics.read_text()
    )
