"""Run Great Expectations suites over in-memory frames and write the gate's reports.

Code-first GX 1.x: an ephemeral context, one pandas datasource, one dataframe asset and
suite per `Batch`, a checkpoint over all of them with COMPLETE results, and a data-docs
site whose files live under the gate's folder (`<gate_dir>/docs/index.html`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.errors import GateFailed
from tasks.gates.report import MAX_EXAMPLES, GateReport, Outcome, jsonable


@dataclass
class Batch:
    """One frame to validate and the expectations that apply to it.

    `id_column` names the column whose values identify offending rows in the report.
    """

    asset: str
    frame: pd.DataFrame
    expectations: list[Any] = field(default_factory=list)  # GX expectation objects
    id_column: str | None = None


def import_gx() -> Any:
    """Import great_expectations lazily, with usage analytics off (no network here)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    return gx


def _outcome(asset: str, result: Any, batch: Batch) -> Outcome:
    config = result.expectation_config
    info = result.exception_info or {}
    # a failed metric shows up as {metric id: {raised_exception, exception_message}}
    errors = [v for v in info.values() if isinstance(v, dict) and v.get("raised_exception")]
    if info.get("raised_exception"):
        errors.append(info)
    res = result.result or {}
    example_ids: list[Any] = []
    index_list = res.get("unexpected_index_list") or []
    if batch.id_column and batch.id_column in batch.frame.columns and index_list:
        labels = [i for i in index_list[:MAX_EXAMPLES] if i in batch.frame.index]
        example_ids = [jsonable(v) for v in batch.frame.loc[labels, batch.id_column]]
    return Outcome(
        name=config.type,
        asset=asset,
        column=config.kwargs.get("column"),
        success=bool(result.success) and not errors,
        unexpected_count=res.get("unexpected_count"),
        examples=jsonable(list(res.get("partial_unexpected_list") or [])[:MAX_EXAMPLES]),
        example_ids=example_ids,
        observed=jsonable(res.get("observed_value", res.get("details"))),
        description=config.description,
        error=errors[0].get("exception_message") if errors else None,
    )


def validate(gate: str, batches: list[Batch], out_dir: str | Path) -> GateReport:
    """Validate every batch with GX, build data docs under `out_dir`, write summary.json.

    Returns the report (passed or not); `run_gate` is the raising wrapper stages use.
    """
    gx = import_gx()
    out_dir = Path(out_dir)
    docs_dir = out_dir / "docs"
    # a stale page from an earlier run must not sit next to this run's verdict
    shutil.rmtree(docs_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)

    context = gx.get_context(mode="ephemeral")
    site = f"{gate}_site"
    context.add_data_docs_site(
        site_name=site,
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    datasource = context.data_sources.add_pandas(f"{gate}_frames")
    definitions = []
    parameters: dict[str, dict[str, pd.DataFrame]] = {}
    for batch in batches:
        asset = datasource.add_dataframe_asset(batch.asset)
        batch_def = asset.add_batch_definition_whole_dataframe(batch.asset)
        suite = context.suites.add(gx.ExpectationSuite(name=f"{gate}.{batch.asset}"))
        for expectation in batch.expectations:
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{gate}.{batch.asset}", data=batch_def, suite=suite)
        )
        definitions.append(definition)
        parameters[definition.name] = {"dataframe": batch.frame}

    outcomes: list[Outcome] = []
    by_asset = {b.asset: b for b in batches}
    for definition in definitions:
        # each definition runs with its own frame; one checkpoint each keeps the docs action
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"{definition.name}.checkpoint",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=[site])],
                result_format={"result_format": "COMPLETE"},
            )
        )
        result = checkpoint.run(batch_parameters=parameters[definition.name])
        asset_name = definition.name.split(".", 1)[1]
        for validation in result.run_results.values():
            for expectation_result in validation.results:
                outcomes.append(_outcome(asset_name, expectation_result, by_asset[asset_name]))

    html_path = docs_dir / "index.html"
    report = GateReport(
        gate=gate,
        outcomes=outcomes,
        summary_path=out_dir / "summary.json",
        html_path=html_path if html_path.exists() else None,
    )
    report.write_summary()
    return report


def run_gate(gate: str, build: Callable[[], list[Batch]], out_dir: str | Path) -> dict[str, Any]:
    """Build the batches, validate, raise GateFailed with a readable summary unless all pass."""
    report = validate(gate, build(), out_dir)
    if not report.passed:
        raise GateFailed(report.message())
    return report.to_dict() | {"expectations": len(report.outcomes)}
