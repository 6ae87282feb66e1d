"""The expectation suites of the data gates, as lists of `Batch`es for `runner.validate`.

Each builder imports GX lazily. Frames sent to GX never carry image bytes: the `image`
column is replaced by the encoded size in bytes (the report shows values, and a few MB of
PNG in a JSON example list helps no one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tasks.curation.balancing import kept_count_bounds
from tasks.gates.runner import Batch, import_gx
from tasks.pair_table import PAIR_COLUMNS, QUARANTINE_COLUMNS
from tasks.params import GateParams

SHA256_REGEX = r"^[0-9a-f]{64}$"
SPLITS = ["train", "eval"]
INT_TYPES = ["int8", "int16", "int32", "int64", "Int32", "Int64"]


def gx_view(pairs: pd.DataFrame) -> pd.DataFrame:
    """The pair table as GX sees it: `image` holds the encoded size in bytes."""
    view = pairs.copy()
    if "image" in view.columns:
        view["image"] = view["image"].map(lambda b: len(b) if b is not None else 0)
    return view


def _pair_row_expectations(gp: GateParams) -> list[Any]:
    """Per-row rules every pair table must satisfy (raw and curated alike)."""
    gxe = import_gx().expectations
    return [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=PAIR_COLUMNS, exact_match=True, description="pair table schema"
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="id"),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToNotBeNull(column="sha256"),
        gxe.ExpectColumnValuesToMatchRegex(
            column="sha256", regex=SHA256_REGEX, description="64 lowercase hex digits"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="image", min_value=1, description="encoded image size in bytes"
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="caption"),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column="caption", min_value=1, max_value=gp.max_caption_chars
        ),
        gxe.ExpectColumnValuesToMatchRegex(column="caption", regex=r"\S", description="not blank"),
        gxe.ExpectColumnValuesToBeInTypeList(column="width", type_list=INT_TYPES),
        gxe.ExpectColumnValuesToBeInTypeList(column="height", type_list=INT_TYPES),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=gp.min_image_side),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=gp.min_image_side),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=SPLITS),
        gxe.ExpectColumnValuesToBeInSet(column="source", value_set=gp.known_sources),
    ]


def raw_batches(pairs: pd.DataFrame, quarantine: pd.DataFrame, gp: GateParams) -> list[Batch]:
    """gate_raw: the ingest pair table, the quarantine table and the quarantine share."""
    gxe = import_gx().expectations
    pair_rules = _pair_row_expectations(gp) + [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=gp.min_rows, description=f"rows >= gate.min_rows = {gp.min_rows}"
        )
    ]
    total = len(pairs) + len(quarantine)
    share = pd.DataFrame(
        {
            "pairs": [len(pairs)],
            "quarantined": [len(quarantine)],
            "quarantine_fraction": [len(quarantine) / total if total else 0.0],
        }
    )
    return [
        Batch("pairs", gx_view(pairs), pair_rules, id_column="id"),
        Batch(
            "quarantine",
            quarantine,
            [
                gxe.ExpectTableColumnsToMatchSet(column_set=QUARANTINE_COLUMNS, exact_match=True),
                gxe.ExpectColumnValuesToNotBeNull(column="reason"),
            ],
            id_column="row",
        ),
        Batch(
            "quarantine_share",
            share,
            [
                gxe.ExpectColumnValuesToBeBetween(
                    column="quarantine_fraction",
                    min_value=0.0,
                    max_value=gp.max_quarantine_fraction,
                    description=f"<= gate.max_quarantine_fraction = {gp.max_quarantine_fraction}",
                )
            ],
        ),
    ]


def balance_frame(
    pool_matches: list[list[int]], kept: np.ndarray, entries: list[str], t: int, alpha: float
) -> pd.DataFrame:
    """Per matched entry: count before, kept after, and the sound bounds balancing implies.

    `pool_matches` are the matched entry ids of every pair that entered balancing, `kept`
    marks those still in the curated table. See `kept_count_bounds` for the bound.
    """
    bounds = kept_count_bounds(pool_matches, len(entries), t, alpha)
    kept_matches = [m for m, k in zip(pool_matches, kept, strict=True) if k]
    kept_counts = np.bincount(
        np.fromiter((e for m in kept_matches for e in m), dtype=np.int64),
        minlength=len(entries),
    )
    active = np.flatnonzero(bounds["count"] > 0)
    frame = pd.DataFrame(
        {
            "entry": [entries[i] for i in active],
            "count_before": bounds["count"][active],
            "p": bounds["p"][active],
            "kept": kept_counts[active],
            "expected": bounds["expected"][active],
            "lower": bounds["lower"][active],
            "upper": bounds["upper"][active],
        }
    )
    frame["excess_over_upper"] = frame["kept"] - frame["upper"]
    frame["shortfall_under_lower"] = frame["lower"] - frame["kept"]
    return frame


def curated_batches(
    curated: pd.DataFrame,
    removed: pd.DataFrame,
    report: dict[str, Any],
    balance: pd.DataFrame,
    gp: GateParams,
    *,
    kept_ids: pd.DataFrame,
    kept_from_pairs: pd.DataFrame,
    shard_rows: pd.DataFrame,
    matches: pd.DataFrame,
) -> list[Batch]:
    """gate_curated: schema, duplicates, eval leakage, recorded matches, balance bounds, the
    accounting identity.

    `kept_ids` is curate's kept id list, `kept_from_pairs` its rows from the pipeline's pair
    table (the curated table must hold exactly those), `shard_rows` (id, split, sha256) the
    rows of the output shards, `matches` the recorded-vs-rematched check of `match_check`.
    """
    gxe = import_gx().expectations
    train = curated[curated["split"] == "train"].copy()
    eval_rows = curated[curated["split"] == "eval"]
    eval_id_by_sha = dict(zip(eval_rows["sha256"], eval_rows["id"], strict=True))
    train["eval_copy_of"] = train["sha256"].map(eval_id_by_sha)
    train["in_kept_ids"] = train["id"].isin(set(kept_ids["id"]))
    shard_train = shard_rows[(shard_rows["split"] == "train") & shard_rows["sha256"].notna()]

    kept = report.get("kept", {})
    filtered = sum(report.get("filtered", {}).values())
    quarantined = sum(report.get("quarantined", {}).values())
    from_pairs = kept_from_pairs["split"].value_counts()
    accounting = pd.DataFrame(
        {
            "identity_gap": [
                report.get("rows_in", 0) - sum(kept.values()) - filtered - quarantined
            ],
            "kept_ids_gap": [sum(kept.values()) - len(kept_ids)],
            "shards_gap": [len(shard_rows) - len(kept_ids)],
            "kept_train_gap": [int(from_pairs.get("train", 0)) - len(train)],
            "kept_eval_gap": [int(from_pairs.get("eval", 0)) - len(eval_rows)],
            "filtered_gap": [filtered - len(removed)],
        }
    )
    return [
        Batch("curated", gx_view(curated), _pair_row_expectations(gp), id_column="id"),
        Batch(
            "curated_train",
            train[["id", "sha256", "eval_copy_of", "in_kept_ids"]],
            [
                gxe.ExpectColumnValuesToBeUnique(
                    column="sha256", description="no exact duplicate image among train rows"
                ),
                gxe.ExpectColumnValuesToBeNull(
                    column="eval_copy_of", description="id of an eval row with the same image"
                ),
                gxe.ExpectColumnValuesToBeInSet(
                    column="in_kept_ids",
                    value_set=[True],
                    description="every curated train row is in kept_ids.parquet",
                ),
            ],
            id_column="id",
        ),
        Batch(
            "shards_train",
            shard_train[["id", "sha256"]],
            [
                gxe.ExpectColumnValuesToBeUnique(column="id", description="one row per kept id"),
                gxe.ExpectColumnValuesToBeUnique(
                    column="sha256", description="no exact duplicate image among kept shard rows"
                ),
            ],
            id_column="id",
        ),
        Batch(
            "entry_matches",
            matches,
            [
                gxe.ExpectColumnValuesToBeInSet(
                    column="agree",
                    value_set=[True],
                    description="entries curate recorded = a fresh match of the caption",
                )
            ],
            id_column="id",
        ),
        Batch(
            "entry_balance",
            balance,
            [
                gxe.ExpectColumnValuesToBeBetween(
                    column="excess_over_upper",
                    max_value=0,
                    description=f"kept per entry <= Bernstein upper bound (t={report.get('t')})",
                ),
                gxe.ExpectColumnValuesToBeBetween(
                    column="shortfall_under_lower",
                    max_value=0,
                    description="kept per entry >= Bernstein lower bound",
                ),
            ],
            id_column="entry",
        ),
        Batch(
            "accounting",
            accounting,
            [
                gxe.ExpectColumnValuesToBeBetween(
                    column=col, min_value=0, max_value=0, description=desc
                )
                for col, desc in [
                    ("identity_gap", "rows_in - kept - filtered - quarantined"),
                    ("kept_ids_gap", "report kept total - rows in kept_ids.parquet"),
                    ("shards_gap", "rows in the output shards - rows in kept_ids.parquet"),
                    ("kept_train_gap", "kept train ids of the pair table - curated train rows"),
                    ("kept_eval_gap", "kept eval ids of the pair table - curated eval rows"),
                    ("filtered_gap", "report filtered total - rows in removed.parquet"),
                ]
            ],
        ),
    ]
