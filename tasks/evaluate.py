"""evaluate stage: zero-shot classification, retrieval and embedding geometry per model.

Reads: `data/curate/curated.parquet` (eval rows), `models/<stage>/` for each stage in
`evaluate.models`. Params: `evaluate`, `ingest.digits.eval_templates`, `register.stage`
(whose confusion matrix is drawn), `device`.
Writes: `metrics/evaluate.json` ({stage: {metric: value}}), `plots/eval_recall.csv`,
`plots/eval_per_class.csv`, `plots/eval_summary.png`, `plots/eval_confusion.png`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tasks.device import pick_device
from tasks.errors import StageError
from tasks.evaluation.eval_sets import build_eval_sets
from tasks.evaluation.model_eval import ModelEvaluation, chance_levels, evaluate_model
from tasks.evaluation.plots import (
    plot_confusion,
    plot_summary,
    write_per_class_csv,
    write_recall_csv,
)
from tasks.layout import Layout
from tasks.models.factory import ModelLoadError
from tasks.models.io import load_model
from tasks.pair_table import read_pairs
from tasks.params import PipelineParams
from tasks.stage_cli import stage_main

RECALL_CSV = "eval_recall.csv"
PER_CLASS_CSV = "eval_per_class.csv"
SUMMARY_PNG = "eval_summary.png"
CONFUSION_PNG = "eval_confusion.png"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _write_plots(
    layout: Layout, results: dict[str, ModelEvaluation], params: PipelineParams
) -> dict[str, str]:
    metrics = {stage: r.metrics for stage, r in results.items()}
    ks = params.evaluate.recall_at
    written = {
        "recall_csv": write_recall_csv(layout.plots_dir / RECALL_CSV, metrics, ks),
        "per_class_csv": write_per_class_csv(
            layout.plots_dir / PER_CLASS_CSV,
            {
                f"{stage}:{task}": (zs.classnames, zs.per_class_recall)
                for stage, r in results.items()
                for task, zs in r.zeroshot.items()
            },
        ),
    }
    bar_keys = ["zeroshot_acc1", "zeroshot_mean_per_class_recall", "textiles_zeroshot_acc1"]
    bar_keys += [f"image_retrieval_recall@{k}" for k in ks]
    bar_keys += [f"text_retrieval_recall@{k}" for k in ks]
    written["summary_png"] = plot_summary(layout.plots_dir / SUMMARY_PNG, metrics, bar_keys)
    # The registered stage is the one people will use; fall back to the last one evaluated.
    shown = params.register.stage if params.register.stage in results else list(results)[-1]
    digits = results[shown].zeroshot["digits"]
    written["confusion_png"] = plot_confusion(
        layout.plots_dir / CONFUSION_PNG,
        digits.confusion,
        digits.classnames,
        f"{shown}: zero-shot digits (acc1 {digits.acc1:.3f})",
    )
    return {name: str(path.relative_to(layout.root)) for name, path in written.items()}


def run(params: PipelineParams, layout: Layout) -> dict[str, Any]:
    """Score every model in `evaluate.models` and write metrics and plots."""
    missing = [s for s in params.evaluate.models if not layout.model_dir(s).exists()]
    if missing:
        raise StageError(
            f"no saved model for {missing} under {layout.root / 'models'}: run the stage(s) "
            "that train them first, or drop them from evaluate.models"
        )
    try:
        curated = read_pairs(layout.curated)
    except (FileNotFoundError, ValueError) as exc:
        raise StageError(str(exc)) from None
    sets = build_eval_sets(curated, params)
    device = pick_device(params.device)

    results: dict[str, ModelEvaluation] = {}
    for stage in tqdm(params.evaluate.models, desc="evaluate models", unit="model"):
        try:
            loaded = load_model(layout.model_dir(stage), device)
        except ModelLoadError as exc:
            raise StageError(f"cannot evaluate {stage!r}: {exc}") from None
        results[stage] = evaluate_model(
            loaded, sets, params.evaluate.recall_at, params.evaluate.batch_size
        )
        del loaded  # free the model before loading the next one (GPU memory)

    metrics = {stage: r.metrics for stage, r in results.items()}
    _write_json(layout.eval_metrics, metrics)
    plots = _write_plots(layout, results, params)
    return {
        "metrics": metrics,
        "chance": chance_levels(sets, params.evaluate.recall_at),
        "eval_rows": sets.counts(),
        "skipped": sets.skipped,
        "metrics_file": str(layout.eval_metrics.relative_to(layout.root)),
        "plots": plots,
    }


def main(argv: list[str] | None = None) -> int:
    return stage_main("evaluate", run, argv)


if __name__ == "__main__":
    sys.exit(main())
