"""finetune stage: adapt a trained model (student or teacher) with a recipe, then WiSE-FT.

Reads `params.finetune` (+ `seed`, `device`, `evaluate.batch_size`,
`evaluate.retrieval_sources`, `evaluate.textiles_templates`, `ingest.digits.eval_templates`),
`models/<finetune.base>/`, `data/curate/curated.parquet`.
Writes `models/finetuned/` (card: recipe params, `metrics.wise_ft_alpha`, MoE layout),
`plots/finetune_loss.csv`, `metrics/wise_ft.json`, `plots/wise_ft.csv`, `plots/wise_ft.png`.

Recipes (`finetune.recipe`, one module each in tasks/finetuning): `contrastive` (CLIP
loss), `m2mix` (geodesic multi-modal mixup), `cleanclip` (CLIP + in-modal loss on
augmented views), `locked-text` (image tower only), `moe` (CLIP-MoE upcycling). After
training, WiSE-FT scores `(1-a) base + a fine-tuned` for each `finetune.wise_ft_alphas` on
a validation slice held out from the train rows and on the eval split, and saves the alpha
the rule in tasks.finetuning.wise_ft picks.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pandas as pd
import torch

from tasks.device import pick_device
from tasks.errors import StageError
from tasks.evaluation.eval_sets import EvalSets, build_eval_sets
from tasks.finetuning import cleanclip, locked_text, m2mix, moe, wise_ft
from tasks.finetuning.recipe import Recipe
from tasks.layout import Layout
from tasks.models.factory import WEIGHTS_FILE, ModelLoadError, apply_locks
from tasks.models.io import load_model, sha256_file
from tasks.pair_table import read_pairs
from tasks.params import FinetuneParams, PipelineParams
from tasks.stage_cli import stage_main
from tasks.training.objective import ClipObjective, Objective
from tasks.training.stage_common import save_trained
from tasks.training.trainer import train

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe("contrastive", "CLIP loss", lambda p: ClipObjective()),
        Recipe("m2mix", "CLIP + geodesic multi-modal mixup", m2mix.objective),
        Recipe(
            "cleanclip", "CLIP + in-modal loss on views", cleanclip.objective, data=cleanclip.data
        ),
        Recipe(
            "locked-text",
            "image tower only, text side locked",
            locked_text.objective,
            prepare=locked_text.lock_text_side,
        ),
        Recipe("moe", "CLIP-MoE upcycled ViT FFNs", moe.objective, prepare=moe.upcycle),
    ]
}


def get_recipe(name: str) -> Recipe:
    """The recipe of that name, or a StageError listing the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise StageError(f"finetune.recipe {name!r} is unknown; known: {sorted(RECIPES)}") from None


def recipe_objective(name: str, params: FinetuneParams | None = None) -> Objective:
    """A fresh Objective of a recipe (default params), or a StageError listing the known ones."""
    return get_recipe(name).objective(params or FinetuneParams(recipe="contrastive"))


def wise_ft_metrics_path(layout: Layout):
    return layout.root / "metrics" / "wise_ft.json"


def _read_curated(layout: Layout) -> pd.DataFrame:
    try:
        return read_pairs(layout.curated)
    except (FileNotFoundError, ValueError) as exc:
        raise StageError(f"{exc} (the curate stage writes {layout.curated})") from None


def split_validation(
    train_rows: pd.DataFrame, fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows to train on, validation slice) drawn seeded from the train rows."""
    val = train_rows.sample(frac=fraction, random_state=seed)
    rest = train_rows.drop(index=val.index)
    return rest.reset_index(drop=True), val.reset_index(drop=True)


def validation_sets(val_rows: pd.DataFrame, params: PipelineParams) -> EvalSets:
    """The validation slice as eval sets (same prompts and retrieval rules as evaluate)."""
    try:
        return build_eval_sets(val_rows.assign(split="eval"), params)
    except StageError as exc:
        raise StageError(
            f"WiSE-FT validation slice ({len(val_rows)} train rows, "
            f"finetune.wise_ft_val_fraction={params.finetune.wise_ft_val_fraction}): {exc}. "
            "Raise the fraction, or set finetune.wise_ft_alphas: [] to skip WiSE-FT"
        ) from None


def run(params: PipelineParams, layout: Layout) -> dict[str, Any]:
    """Fine-tune `models/<base>` with the chosen recipe, WiSE-FT it, save `models/finetuned`."""
    p = params.finetune
    recipe = get_recipe(p.recipe)
    device = pick_device(params.device)
    base_dir = layout.model_dir(p.base)
    try:
        loaded = load_model(base_dir, "cpu")
    except ModelLoadError as exc:
        raise StageError(f"finetune.base={p.base!r}: {exc}") from None

    curated = _read_curated(layout)
    train_rows = curated[curated["split"] == "train"].reset_index(drop=True)
    wise = bool(p.wise_ft_alphas)
    val_sets = eval_sets = None
    if wise:
        train_rows, val_rows = split_validation(train_rows, p.wise_ft_val_fraction, p.seed)
        val_sets = validation_sets(val_rows, params)
        eval_sets = build_eval_sets(curated, params)
    if len(train_rows) < 2:
        raise StageError(
            f"{layout.curated} leaves {len(train_rows)} train rows to fine-tune on; training "
            "needs at least 2 (check the ingest sources, curation, wise_ft_val_fraction)"
        )

    # load_model returns every parameter trainable; lock what the recipe keeps fixed.
    apply_locks(loaded.model, lock_text=p.lock_text, lock_image=False)
    prepared = recipe.prepare(loaded, p)
    base_state = wise_ft.cpu_state(loaded.model)  # after prepare: an MoE base is upcycled

    torch.manual_seed(p.seed)
    data = recipe.data(train_rows, loaded, p)
    result = train(
        loaded.model, data, recipe.objective(p), p, device, layout.train_log("finetune"), "finetune"
    )

    extra: dict[str, Any] = {k: v for k, v in prepared.items() if k != "moe"}
    summary = None
    if wise:
        tuned_state = wise_ft.cpu_state(loaded.model)
        rows = wise_ft.sweep(
            loaded,
            base_state,
            tuned_state,
            p.wise_ft_alphas,
            val_sets,
            eval_sets,
            params.evaluate.batch_size,
        )
        chosen = wise_ft.choose(rows)
        loaded.model.load_state_dict(wise_ft.interpolate(base_state, tuned_state, chosen["alpha"]))
        summary = wise_ft.summary(rows, chosen, p.recipe)
        _write_wise_ft(layout, summary, rows, p.recipe)
        extra.update(wise_ft_alpha=chosen["alpha"], wise_ft_val_score=chosen["val_score"])
    loaded.model.to("cpu").eval()

    parent = {
        "stage": p.base,
        "model_dir": str(base_dir),
        "weights_sha256": sha256_file(base_dir / WEIGHTS_FILE),
    }
    card = save_trained(
        loaded,
        layout.model_dir("finetuned"),
        "finetuned",
        parent,
        p,
        result,
        len(train_rows),
        extra_metrics=extra,
    )
    return {**card, "wise_ft": summary}


def _write_wise_ft(layout: Layout, summary: dict[str, Any], rows: list, recipe: str) -> None:
    path = wise_ft_metrics_path(layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    wise_ft.write_csv(rows, layout.plots_dir / "wise_ft.csv")
    wise_ft.plot(
        rows, summary["alpha"], layout.plots_dir / "wise_ft.png", f"WiSE-FT of recipe {recipe}"
    )


def main(argv: list[str] | None = None) -> int:
    return stage_main("finetune", run, argv)


if __name__ == "__main__":
    sys.exit(main())
