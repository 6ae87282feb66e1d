"""What a fine-tuning recipe is: an Objective plus how it prepares the model and the data.

The finetune stage runs every recipe the same way: load the base model, `prepare` it
(lock, upcycle, ...), build the batch source with `data`, train with `objective`, then
WiSE-FT. A recipe that needs nothing special uses the defaults below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tasks.models.factory import LoadedModel
from tasks.params import FinetuneParams
from tasks.training.data import BatchSource, PairTensors
from tasks.training.objective import Objective
from tasks.training.stage_common import augment_from


def no_preparation(loaded: LoadedModel, params: FinetuneParams) -> dict[str, Any]:
    """Train what `lock_text` leaves trainable."""
    return {}


def plain_pairs(rows: pd.DataFrame, loaded: LoadedModel, params: FinetuneParams) -> BatchSource:
    """Image-caption pairs with the section's image augmentation."""
    return PairTensors.from_frame(rows, loaded, augment_from(params))


@dataclass(frozen=True)
class Recipe:
    """One fine-tuning method.

    `objective(params)` builds the training objective; `prepare(loaded, params)` changes the
    model in place before training (locks, MoE upcycling) and returns facts for the card;
    `data(rows, loaded, params)` builds the batch source (e.g. with augmented views).
    """

    name: str
    description: str
    objective: Callable[[FinetuneParams], Objective]
    prepare: Callable[[LoadedModel, FinetuneParams], dict[str, Any]] = field(default=no_preparation)
    data: Callable[[pd.DataFrame, LoadedModel, FinetuneParams], BatchSource] = field(
        default=plain_pairs
    )
