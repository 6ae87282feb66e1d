"""Prefect flows over the clipops stages: composition and reporting only, no ML logic.

Each task is a thin wrapper over a stage's `run(params, layout)`, the same function
`dvc repro` calls through `python -m tasks.<stage>`, so both front doors produce the same
outputs for the same parameters.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Literal, get_args

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.curation.report import curation_markdown, reason_rows
from tasks.layout import Layout
from tasks.params import PipelineParams

StageName = Literal[
    "ingest",
    "gate_raw",
    "curate",
    "gate_curated",
    "teacher",
    "reinforce",
    "distill",
    "finetune",
    "evaluate",
    "gate_eval",
    "register",
]
# Pipeline order; the Literal above is also the type of the UI's stage picker.
STAGES: tuple[str, ...] = get_args(StageName)


def _summary_json(summary: Any) -> Any:
    if summary is None:
        return None
    if hasattr(summary, "model_dump"):
        return summary.model_dump(mode="json")
    return json.loads(json.dumps(summary, default=str))


@task(name="stage", task_run_name="{stage}", retries=0)
def run_stage_task(stage: str, params: PipelineParams, root: str) -> Any:
    """Run one stage's `run()` in this process and publish its summary as an artifact."""
    module = importlib.import_module(f"tasks.{stage}")
    summary = _summary_json(module.run(params, Layout.at(root)))
    get_run_logger().info("stage %s finished: %s", stage, json.dumps(summary, default=str)[:500])
    create_markdown_artifact(
        key=f"{stage.replace('_', '-')}-summary",
        markdown=f"## {stage}\n\n```json\n{json.dumps(summary, indent=2, default=str)}\n```",
        description=f"clipops {stage} summary",
    )
    return summary


def _publish_metrics(root: str) -> None:
    """The evaluation metrics as a table artifact (one row per model), readable in the UI."""
    path = Layout.at(root).eval_metrics
    if not path.exists():
        return
    metrics = json.loads(path.read_text())
    rows = [{"model": stage, **values} for stage, values in metrics.items()]
    create_table_artifact(key="evaluation-metrics", table=rows, description="clipops evaluate")


def _publish_curation(root: str) -> None:
    """The curation report as a Markdown artifact and a per-reason table artifact."""
    path = Layout.at(root).curation_report
    if not path.exists():
        return
    report = json.loads(path.read_text())
    create_markdown_artifact(
        key="curation-report", markdown=curation_markdown(report), description="clipops curate"
    )
    create_table_artifact(
        key="curation-reasons", table=reason_rows(report), description="rows per reason"
    )


@flow(name="clip-pipeline", log_prints=True)
def clip_pipeline(
    params: PipelineParams = PipelineParams(),  # noqa: B008 (pydantic default shown in the UI form)
    root: str = ".",
    stages: list[StageName] | None = None,
) -> dict[str, Any]:
    """The whole clipops pipeline (or the listed `stages`, in pipeline order) under `root`."""
    wanted = [s for s in STAGES if stages is None or s in stages]
    Path(root).mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for stage in wanted:
        results[stage] = run_stage_task(stage, params, root)
        if stage == "curate":
            _publish_curation(root)
        if stage == "evaluate":
            _publish_metrics(root)
    return results


@flow(name="clip-stage", log_prints=True)
def clip_stage(
    stage: StageName,
    params: PipelineParams = PipelineParams(),  # noqa: B008
    root: str = ".",
) -> Any:
    """One stage on its own (its inputs must already exist under `root`)."""
    return clip_pipeline.fn(params=params, root=root, stages=[stage])[stage]
