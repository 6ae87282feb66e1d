"""Every fine-tuning recipe side by side, through the real stage functions.

    .venv/bin/python -m bench.finetune_recipes [--project DIR] [--recipes a b ...]

Prepares a project once (ingest -> gates -> curate -> teacher -> reinforce -> distill with
the default params; reused when `DIR/models/student` exists), then for each recipe runs
`tasks.finetune.run` (recipe + WiSE-FT sweep) and `tasks.evaluate.run` on the fine-tuned
model, exactly as `dvc exp run -S finetune.recipe=<name>` would. Prints a table and writes
reports/bench/finetune_recipes.json (recipe, digits acc1, retrieval R@5 both ways,
alignment, uniformity, chosen WiSE alpha, wall s), plus the student as the zero-shot row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, get_args

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/finetune_recipes.py` as well as `-m`
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tasks import (  # noqa: E402
    curate,
    distill,
    evaluate,
    finetune,
    gate_curated,
    gate_raw,
    ingest,
    reinforce,
    teacher,
)
from tasks.layout import Layout  # noqa: E402
from tasks.params import FinetuneParams, PipelineParams, load_params  # noqa: E402

PREPARE = [
    ("ingest", ingest.run),
    ("gate_raw", gate_raw.run),
    ("curate", curate.run),
    ("gate_curated", gate_curated.run),
    ("teacher", teacher.run),
    ("reinforce", reinforce.run),
    ("distill", distill.run),
]
OUT = REPO / "reports" / "bench" / "finetune_recipes.json"
COLUMNS = [
    ("digits_acc1", "zeroshot_acc1"),
    ("t2i_R@5", "image_retrieval_recall@5"),
    ("i2t_R@5", "text_retrieval_recall@5"),
    ("alignment", "alignment"),
    ("uniformity", "uniformity"),
]


def prepare(params: PipelineParams, layout: Layout) -> dict[str, float]:
    """Run the stages up to distill unless the student already exists; their wall seconds."""
    if (layout.model_dir("student") / "model.safetensors").is_file():
        print(f"reusing {layout.root} (models/student exists)")
        return {}
    walls = {}
    for name, run in PREPARE:
        start = time.perf_counter()
        run(params, layout)
        walls[name] = round(time.perf_counter() - start, 1)
        print(f"prepared {name}: {walls[name]} s", flush=True)
    return walls


def run_recipe(params: PipelineParams, layout: Layout, recipe: str) -> dict[str, Any]:
    """finetune.run with `recipe`, then evaluate.run on the fine-tuned model."""
    p = params.model_copy(deep=True)
    p.finetune.recipe = recipe
    p.evaluate.models = ["finetuned"]
    start = time.perf_counter()
    card = finetune.run(p, layout)
    finetune_s = time.perf_counter() - start
    metrics = evaluate.run(p, layout)["metrics"]["finetuned"]
    wall = time.perf_counter() - start
    wise = card.get("wise_ft") or {}
    row: dict[str, Any] = {"recipe": recipe}
    row.update({col: metrics.get(key) for col, key in COLUMNS})
    row["wise_ft_alpha"] = wise.get("alpha")
    # the un-interpolated recipe (alpha = 1) on the eval split, from the sweep
    full = next((r for r in wise.get("sweep", []) if r["alpha"] == 1.0), None)
    if full is not None:
        row["alpha1_digits_acc1"] = full["eval"].get("zeroshot_acc1")
        row["alpha1_t2i_R@5"] = full["eval"].get("image_retrieval_recall@5")
    row["train_wall_s"] = card["metrics"].get("wall_s")
    row["finetune_s"] = round(finetune_s, 1)
    row["wall_s"] = round(wall, 1)
    return row


def baseline(params: PipelineParams, layout: Layout) -> dict[str, Any]:
    """The student before fine-tuning (the zero-shot baseline every recipe starts from)."""
    p = params.model_copy(deep=True)
    p.evaluate.models = [p.finetune.base]
    start = time.perf_counter()
    metrics = evaluate.run(p, layout)["metrics"][p.finetune.base]
    row: dict[str, Any] = {"recipe": f"(base: {p.finetune.base})"}
    row.update({col: metrics.get(key) for col, key in COLUMNS})
    row["wise_ft_alpha"] = None
    row["wall_s"] = round(time.perf_counter() - start, 1)
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    cols = ["recipe", *(c for c, _ in COLUMNS), "wise_ft_alpha", "alpha1_digits_acc1", "wall_s"]
    lines = [" | ".join(cols), " | ".join("---" for _ in cols)]
    for row in rows:
        cells = []
        for c in cols:
            v = row.get(c)
            cells.append(f"{v:.3f}" if isinstance(v, float) and c != "wall_s" else str(v))
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.finetune_recipes")
    parser.add_argument("--project", default="/tmp/clipops-finetune-recipes", type=Path)
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--recipes", nargs="*", default=None, help="default: all")
    parser.add_argument("--prepare-only", action="store_true")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    layout = Layout.at(args.project)
    prepare_s = prepare(params, layout)
    if args.prepare_only:
        return 0
    known = list(get_args(FinetuneParams.model_fields["recipe"].annotation))
    recipes = args.recipes or known
    rows = [baseline(params, layout)]
    for recipe in recipes:
        print(f"--- recipe {recipe}", flush=True)
        rows.append(run_recipe(params, layout, recipe))
        print(format_table(rows[-1:]), flush=True)
    table = format_table(rows)
    print(table)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "project": str(layout.root),
                "finetune_params": params.finetune.model_dump(mode="json"),
                "prepare_wall_s": prepare_s,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
