"""Stage `gate_eval`: the candidate model must be good enough and no worse than production.

Reads `layout.eval_metrics` (`{model_stage: {"zeroshot_acc1": ..., ...}}`) and the production
model's metrics from the registry (params: `gate_eval`, `register.model_name`, `storage`).
Writes `layout.gate_dir("eval")/summary.json` and `index.html`; raises GateFailed on a miss.
"""

from __future__ import annotations

import sys
from typing import Any

from tasks.errors import GateFailed, StageError
from tasks.gates.eval_checks import check_eval
from tasks.gates.report import GateReport, render_html
from tasks.gates.tables import read_json
from tasks.layout import Layout
from tasks.params import PipelineParams
from tasks.stage_cli import stage_main


def production_metrics(params: PipelineParams, layout: Layout) -> dict[str, Any] | None:
    """The production model's metrics from the registry, or None if there is none yet."""
    try:
        from storage.registry import Registry
    except ImportError as exc:
        raise StageError(
            f"gate_eval needs storage.registry to read the production model's metrics: {exc}"
        ) from None
    registry = Registry.from_params(params.storage, layout.root)
    return registry.production_metrics(params.register.model_name)


def evaluate_gate(
    metrics: dict[str, dict[str, Any]],
    params: PipelineParams,
    production: dict[str, Any] | None,
    layout: Layout,
) -> GateReport:
    """Run the pure check and write summary.json + index.html (no raising here)."""
    ge = params.gate_eval
    out_dir = layout.gate_dir("eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes = check_eval(metrics, ge.model, ge.min_zeroshot_acc1, ge.max_regression, production)
    report = GateReport("eval", outcomes, out_dir / "summary.json", out_dir / "index.html")
    notes = [
        f"candidate: {ge.model}; model name: {params.register.model_name}",
        f"production metrics: {production if production is not None else 'none registered'}",
    ]
    report.html_path.write_text(render_html(report, "clipops gate eval", notes))
    report.write_summary()
    return report


def run(params: PipelineParams, layout: Layout) -> dict[str, Any]:
    """Check the candidate's metrics against thresholds and production; return the verdict."""
    metrics = read_json(layout.eval_metrics, "metrics file")
    if not isinstance(metrics, dict):
        raise StageError(f"{layout.eval_metrics} must map model stage -> metrics")
    report = evaluate_gate(metrics, params, production_metrics(params, layout), layout)
    if not report.passed:
        raise GateFailed(report.message())
    return report.to_dict()


def main(argv: list[str] | None = None) -> int:
    return stage_main("gate_eval", run, argv)


if __name__ == "__main__":
    sys.exit(main())
