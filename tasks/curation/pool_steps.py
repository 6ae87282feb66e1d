"""The global steps of the streamed curation, over the per-row state of the whole pool.

Each step sees only the train rows still in (reason is None) and removes some with a
stable reason code; the first step that rejects a row names it. Order: duplicate ids,
eval copies (exact, then near), exact duplicates, near duplicates. Every "which copy is
kept" rule is by id order, so the result does not depend on shard order or chunking.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tasks.curation.dedup import eval_copies, exact_duplicates
from tasks.curation.near_dup import near_copies, near_duplicates
from tasks.params import CurateParams

MAX_EXAMPLES = 5


@dataclass
class PoolState:
    """The state table as arrays (entries stay flat, see `tasks.curation.balancing`)."""

    ids: np.ndarray  # object
    split: np.ndarray  # object
    sha256: np.ndarray  # object, None where no image
    phash: np.ndarray  # uint64
    has_phash: np.ndarray  # bool
    thumbnails: np.ndarray  # uint8 [N, 8, 8, 3], zeros where no image
    reason: np.ndarray  # object, None = still in
    detail: np.ndarray  # object
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    steps: dict[str, str] = field(default_factory=dict)  # step -> "ran" / why it did not

    def alive_train(self) -> np.ndarray:
        """Indices of train rows no step removed yet."""
        return np.flatnonzero((self.split == "train") & pd.isna(self.reason))

    def remove(self, rows: np.ndarray, reason: str, details: list[str], examples: list) -> None:
        self.reason[rows] = reason
        self.detail[rows] = np.asarray(details, dtype=object) if len(rows) else self.detail[rows]
        if examples:
            shown = self.examples.setdefault(reason, [])
            shown.extend(examples[: MAX_EXAMPLES - len(shown)])


def _by_id(state: PoolState, rows: np.ndarray) -> np.ndarray:
    """`rows` sorted by id (then position), the canonical order for "first copy wins"."""
    return rows[np.lexsort((rows, state.ids[rows].astype(str)))]


def _thumbnail_check(
    params: CurateParams, query: np.ndarray, reference: np.ndarray | None = None
) -> dict[str, Any]:
    """near_dup keyword arguments that confirm pHash pairs by thumbnails (when enabled)."""
    if not params.near_dup_thumbnail_check:
        return {}
    check: dict[str, Any] = {
        "query_thumbnails": query,
        "max_thumb_distance": params.near_dup_max_thumb_distance,
    }
    if reference is not None:
        check["reference_thumbnails"] = reference
    return check


def run_dedup_steps(state: PoolState, params: CurateParams) -> None:
    """Every id- and image-based removal, in order (the first step to reject a row names it)."""
    remove_duplicate_ids(state)
    remove_eval_copies(state)
    remove_eval_near_copies(state, params)
    remove_exact_duplicates(state, params)
    remove_near_duplicates(state, params)


def remove_duplicate_ids(state: PoolState) -> None:
    """A later row reusing an id is removed: ids must name one row for kept_ids to work."""
    dup = pd.Series(state.ids).duplicated(keep="first").to_numpy() & pd.isna(state.reason)
    rows = np.flatnonzero(dup)
    state.remove(rows, "duplicate_id", ["an earlier row of the pool has this id"] * len(rows), [])
    state.steps["duplicate_id"] = "ran"


def remove_eval_copies(state: PoolState) -> None:
    """Train rows whose image bytes equal an eval image's (sha256)."""
    eval_rows = np.flatnonzero((state.split == "eval") & pd.isna(state.reason))
    alive = state.alive_train()
    hit = eval_copies(_frame(state, alive), _frame(state, eval_rows)).to_numpy(dtype=bool)
    eval_by_sha = dict(zip(state.sha256[eval_rows], state.ids[eval_rows], strict=True))
    rows = alive[hit]
    refs = [eval_by_sha[s] for s in state.sha256[rows]]
    state.remove(
        rows,
        "eval_copy",
        [f"image sha256 equals eval id {r}" for r in refs],
        [{"id": i, "eval_id": r} for i, r in zip(state.ids[rows], refs, strict=True)],
    )
    state.steps["eval_copy"] = "ran"


def _frame(state: PoolState, rows: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"id": state.ids[rows], "sha256": state.sha256[rows]})


def remove_eval_near_copies(state: PoolState, params: CurateParams) -> None:
    """Train rows within `eval_near_copy_distance` pHash bits of an eval image."""
    if params.eval_near_copy_distance is None:
        state.steps["eval_near_copy"] = "skipped: curate.eval_near_copy_distance is null"
        return
    eval_rows = np.flatnonzero((state.split == "eval") & pd.isna(state.reason) & state.has_phash)
    alive = state.alive_train()
    query = alive[state.has_phash[alive]]
    if len(eval_rows) and len(query):
        found = near_copies(
            state.phash[query],
            state.phash[eval_rows],
            state.ids[eval_rows].tolist(),
            params.eval_near_copy_distance,
            **_thumbnail_check(
                params, query=state.thumbnails[query], reference=state.thumbnails[eval_rows]
            ),
        )
        copy = found["copy"].to_numpy(dtype=bool)
        rows = query[copy]
        refs, dist = found["reference_id"].to_numpy()[copy], found["distance"].to_numpy()[copy]
        state.remove(
            rows,
            "eval_near_copy",
            [f"pHash within {d} bits of eval id {r}" for r, d in zip(refs, dist, strict=True)],
            [
                {"id": i, "eval_id": r, "distance": int(d)}
                for i, r, d in zip(state.ids[rows], refs, dist, strict=True)
            ],
        )
    state.steps["eval_near_copy"] = "ran"


def remove_exact_duplicates(state: PoolState, params: CurateParams) -> None:
    """Every train row whose sha256 a row with a smaller id already has."""
    if not params.exact_dedup:
        state.steps["exact_duplicate"] = "skipped: curate.exact_dedup is false"
        return
    alive = state.alive_train()
    found = exact_duplicates(_frame(state, alive))
    dup = found["duplicate"].to_numpy(dtype=bool)
    removed, kept_ids = alive[dup], found["kept_id"].to_numpy()[dup]
    state.remove(
        removed,
        "exact_duplicate",
        [f"same sha256 as kept id {k}" for k in kept_ids],
        [{"id": i, "kept_id": k} for i, k in zip(state.ids[removed], kept_ids, strict=True)],
    )
    state.steps["exact_duplicate"] = "ran"


def remove_near_duplicates(state: PoolState, params: CurateParams) -> None:
    """Train images within `near_dup_max_distance` pHash bits of a kept one (id order)."""
    if not params.near_dedup:
        state.steps["near_duplicate"] = "skipped: curate.near_dedup is false"
        return
    alive = state.alive_train()
    rows = _by_id(state, alive[state.has_phash[alive]])
    if len(rows):
        check = _thumbnail_check(params, query=state.thumbnails[rows])
        found = near_duplicates(
            state.ids[rows].tolist(),
            state.phash[rows],
            params.near_dup_max_distance,
            thumbnails=check.get("query_thumbnails"),
            max_thumb_distance=params.near_dup_max_thumb_distance,
        )
        dup = found["duplicate"].to_numpy(dtype=bool)
        removed = rows[dup]
        kept, dist = found["kept_id"].to_numpy()[dup], found["distance"].to_numpy()[dup]
        state.remove(
            removed,
            "near_duplicate",
            [f"pHash within {d} bits of kept id {k}" for k, d in zip(kept, dist, strict=True)],
            [
                {"id": i, "kept_id": k, "distance": int(d)}
                for i, k, d in zip(state.ids[removed], kept, dist, strict=True)
            ],
        )
    state.steps["near_duplicate"] = "ran"
