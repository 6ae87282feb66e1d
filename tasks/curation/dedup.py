"""Exact deduplication by image sha256, and removal of train images copied from eval.

Rows without an image (null sha256: a text-only pool) are never duplicates or eval copies.
Near duplicates are `tasks.curation.near_dup`; semantic ones `tasks.curation.semdedup`.
"""

from __future__ import annotations

import pandas as pd

# Reason codes of the exact steps (a person filters removed rows by these).
EXACT_DEDUP_REASONS = {
    "eval_copy": "the train image is byte-identical to an eval image",
    "exact_duplicate": "another train row with a smaller id has the same image sha256",
}


def eval_copies(train: pd.DataFrame, eval_rows: pd.DataFrame) -> pd.Series:
    """Boolean mask over `train`: the row's image (sha256) also appears among eval rows.

    Such a row would leak an evaluation image into training, so it is always removed.
    """
    eval_hashes = set(eval_rows["sha256"].dropna())
    return train["sha256"].notna() & train["sha256"].isin(eval_hashes)


def exact_duplicates(train: pd.DataFrame) -> pd.DataFrame:
    """Mark every train row whose sha256 was already seen on a row with a smaller id.

    Returns a frame index-aligned with `train`: `duplicate` (bool) and `kept_id`, the id of
    the copy that is kept (None for kept rows). "First" means first in id order, so the
    result does not depend on the order rows arrived in.
    """
    with_image = train[train["sha256"].notna()]
    ordered = with_image.sort_values("id", kind="stable")
    duplicate = ordered.duplicated("sha256", keep="first")
    first_id = ordered.groupby("sha256", sort=False)["id"].transform("first")
    kept_id = first_id.astype("object").where(duplicate, None)
    out = pd.DataFrame({"duplicate": duplicate, "kept_id": kept_id}).reindex(train.index)
    out["duplicate"] = out["duplicate"].fillna(False).astype(bool)
    out["kept_id"] = out["kept_id"].astype("object").where(out["duplicate"], None)
    return out
