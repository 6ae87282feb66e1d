"""Exact deduplication by image sha256, and removal of train images copied from eval."""

from __future__ import annotations

import pandas as pd


def eval_copies(train: pd.DataFrame, eval_rows: pd.DataFrame) -> pd.Series:
    """Boolean mask over `train`: the row's image (sha256) also appears among eval rows.

    Such a row would leak an evaluation image into training, so it is always removed.
    """
    return train["sha256"].isin(set(eval_rows["sha256"]))


def exact_duplicates(train: pd.DataFrame) -> pd.DataFrame:
    """Mark every train row whose sha256 was already seen on a row with a smaller id.

    Returns a frame index-aligned with `train`: `duplicate` (bool) and `kept_id`, the id of
    the copy that is kept (None for kept rows). "First" means first in id order, so the
    result does not depend on the order rows arrived in.
    """
    ordered = train.sort_values("id", kind="stable")
    duplicate = ordered.duplicated("sha256", keep="first")
    first_id = ordered.groupby("sha256", sort=False)["id"].transform("first")
    kept_id = first_id.where(duplicate, None)
    return pd.DataFrame({"duplicate": duplicate, "kept_id": kept_id}).reindex(train.index)
