"""finetune stage: adapt a trained model (student or teacher) to the curated train rows.

Reads `params.finetune` (+ `seed`, `device`), `models/<finetune.base>/`,
`data/curate/curated.parquet`; writes `models/finetuned/` and `plots/finetune_loss.csv`.

A recipe is an `Objective` for the shared trainer, built by name from `RECIPES`; new
recipes (m2-mix, CleanCLIP, MoE upcycling) add an entry there (and a `recipe` literal in
FinetuneParams) without touching the loop.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from tasks.device import pick_device
from tasks.errors import StageError
from tasks.layout import Layout
from tasks.models.factory import WEIGHTS_FILE, ModelLoadError, apply_locks
from tasks.models.io import load_model, sha256_file
from tasks.params import PipelineParams
from tasks.stage_cli import stage_main
from tasks.training.data import PairTensors
from tasks.training.objective import ClipObjective, Objective
from tasks.training.stage_common import augment_from, read_train_rows, save_trained
from tasks.training.trainer import train

# recipe name -> a factory of its Objective
RECIPES: dict[str, Callable[[], Objective]] = {
    "contrastive": ClipObjective,
}


def recipe_objective(name: str) -> Objective:
    """A fresh Objective of a recipe, or a StageError listing the known ones."""
    try:
        return RECIPES[name]()
    except KeyError:
        raise StageError(f"finetune.recipe {name!r} is unknown; known: {sorted(RECIPES)}") from None


def run(params: PipelineParams, layout: Layout) -> dict[str, Any]:
    """Fine-tune `models/<base>` with the chosen recipe; save to `models/finetuned`."""
    p = params.finetune
    device = pick_device(params.device)
    objective = recipe_objective(p.recipe)
    base_dir = layout.model_dir(p.base)
    try:
        loaded = load_model(base_dir, "cpu")
    except ModelLoadError as exc:
        raise StageError(f"finetune.base={p.base!r}: {exc}") from None
    # load_model returns every parameter trainable; lock what the recipe keeps fixed.
    apply_locks(loaded.model, lock_text=p.lock_text, lock_image=False)
    rows = read_train_rows(layout)

    torch.manual_seed(p.seed)
    data = PairTensors.from_frame(rows, loaded, augment_from(p))
    result = train(
        loaded.model, data, objective, p, device, layout.train_log("finetune"), "finetune"
    )
    parent = {
        "stage": p.base,
        "model_dir": str(base_dir),
        "weights_sha256": sha256_file(base_dir / WEIGHTS_FILE),
    }
    card = save_trained(
        loaded, layout.model_dir("finetuned"), "finetuned", parent, p, result, len(rows)
    )
    return card


def main(argv: list[str] | None = None) -> int:
    return stage_main("finetune", run, argv)


if __name__ == "__main__":
    sys.exit(main())
