"""What the training stages share around the trainer: reading train rows, saving with a card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tasks.errors import StageError
from tasks.layout import Layout
from tasks.models.factory import LoadedModel, vision_parameters
from tasks.models.io import save_model
from tasks.pair_table import read_pairs
from tasks.params import TrainParams
from tasks.training.data import Augment
from tasks.training.trainer import TrainResult


def read_train_rows(layout: Layout) -> pd.DataFrame:
    """The curated train split; a missing table or an empty split is a StageError."""
    try:
        df = read_pairs(layout.curated, columns=["id", "image", "caption", "split"])
    except (FileNotFoundError, ValueError) as exc:
        raise StageError(f"{exc} (the curate stage writes {layout.curated})") from None
    train = df[df["split"] == "train"].reset_index(drop=True)
    if len(train) < 2:
        raise StageError(
            f"{layout.curated} has {len(train)} train rows; training needs at least 2 "
            "(check the ingest sources and the curation filters)"
        )
    return train


def augment_from(params: TrainParams) -> Augment:
    """The image augmentation a TrainParams section asks for."""
    return Augment(crop_scale_min=params.crop_scale_min, flip_p=params.flip_p)


def save_trained(
    loaded: LoadedModel,
    out_dir: Path,
    stage: str,
    parent: dict[str, Any] | None,
    params: TrainParams,
    result: TrainResult,
    train_rows: int,
    extra_metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Save the model folder with a card describing how it was trained; return the card.

    Under torchrun every rank calls this; rank 0 writes and the others wait and return the
    card it wrote (the guard is in `save_model`, so stages calling it directly get it too).
    """
    metrics = {
        "train_rows": train_rows,
        "final_loss": result.final_loss,
        "last_epoch_loss": result.last_epoch_loss,
        "steps": result.steps,
        "wall_s": result.wall_s,
        "samples_per_s": result.samples_per_s,
        "vision_params": vision_parameters(loaded.model),
        **(extra_metrics or {}),
    }
    card = {
        "stage": stage,
        "parent": parent,
        "params": params.model_dump(mode="json"),
        "metrics": metrics,
    }
    return save_model(loaded.model, loaded.name, loaded.model_cfg, out_dir, card)
