"""Pass 1 of the streamed curation: the per-row work, chunk by chunk, into a compact state.

For each chunk of pool rows: DataComp basic filters and the language filter on train rows,
the perceptual hash of every image row, and MetaCLIP matching of the train rows still in.
What the global steps need is kept, per row, in a small table (`STATE_SCHEMA`), never the
images: a pool of millions of rows fits in memory as state while its images stay on disk.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.curation.filters import basic_filter
from tasks.curation.image_hash import image_signatures
from tasks.curation.language import language_filter
from tasks.curation.matching import EntryMatcher
from tasks.errors import StageError
from tasks.params import CurateParams

SPLITS = ("train", "eval")
THUMB_BYTES = 8 * 8 * 3  # tasks.curation.image_hash.THUMB_SIDE squared, RGB

STATE_SCHEMA = pa.schema(
    [
        pa.field("ordinal", pa.int64(), nullable=False),  # position in the pool's read order
        pa.field("id", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("pair_table", pa.bool_(), nullable=False),  # read from the pipeline's pairs
        pa.field("split", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=True),
        pa.field("phash", pa.uint64(), nullable=True),
        pa.field("thumbnail", pa.binary(THUMB_BYTES), nullable=True),  # 8x8 RGB, near-dup check
        pa.field("reason", pa.string(), nullable=True),  # first step that removed the row
        pa.field("detail", pa.string(), nullable=True),
        pa.field("entries", pa.list_(pa.int32()), nullable=True),  # matched entry ids (train)
    ]
)


def check_splits(rows: pd.DataFrame, shard: str) -> None:
    bad = ~rows["split"].isin(SPLITS)
    if bad.any():
        examples = rows.loc[bad, ["id", "split"]].head(3).to_dict("records")
        raise StageError(
            f"{int(bad.sum())} rows of {shard} have a split outside {SPLITS}, e.g. {examples}: "
            "fix the input (gate_raw checks the pair table's splits too)"
        )


def _apply(
    reason: np.ndarray, detail: np.ndarray, index: np.ndarray, verdict: pd.DataFrame
) -> None:
    """Record a step's verdict (index-aligned reason/detail, None = pass) on rows still in."""
    failed = verdict["reason"].notna().to_numpy()
    rows = index[failed]
    reason[rows] = verdict["reason"].to_numpy()[failed]
    detail[rows] = verdict["detail"].astype(object).to_numpy()[failed]


def _thumbnail_column(thumbs: np.ndarray, valid: np.ndarray) -> pa.Array:
    """[n, THUMB_BYTES] uint8 as a fixed-size binary column, null where there is no image."""
    n = len(thumbs)
    dense = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(THUMB_BYTES), n, [None, pa.py_buffer(np.ascontiguousarray(thumbs).tobytes())]
    )
    return pc.if_else(pa.array(valid), dense, pa.scalar(None, pa.binary(THUMB_BYTES)))


def chunk_state(
    rows: pd.DataFrame,
    first_ordinal: int,
    params: CurateParams,
    matcher: EntryMatcher,
    from_pair_table: bool = False,
) -> pa.Table:
    """The state rows of one chunk (`first_ordinal`: the pool position of its first row)."""
    n = len(rows)
    rows = rows.reset_index(drop=True)
    reason = np.full(n, None, dtype=object)
    detail = np.full(n, None, dtype=object)
    is_train = (rows["split"] == "train").to_numpy()

    train_idx = np.flatnonzero(is_train)
    _apply(reason, detail, train_idx, basic_filter(rows.iloc[train_idx], params))

    if params.language_allowed:
        alive = train_idx[reason[train_idx] == None]  # noqa: E711 (elementwise on objects)
        verdict = language_filter(
            rows["caption"].iloc[alive].reset_index(drop=True),
            params.language_allowed,
            params.language_min_confidence,
        )
        _apply(reason, detail, alive, verdict)

    phash = np.zeros(n, dtype=np.uint64)
    thumbs = np.zeros((n, THUMB_BYTES), dtype=np.uint8)
    has_phash = np.zeros(n, dtype=bool)
    # eval rows need signatures too: they are the references for eval near-copies
    hashable = np.flatnonzero(rows["image"].notna().to_numpy() & (reason == None))  # noqa: E711
    if len(hashable):
        signatures = image_signatures(
            rows["image"].iloc[hashable].tolist(), rows["id"].iloc[hashable].tolist()
        )
        phash[hashable] = signatures.phash
        thumbs[hashable] = signatures.thumbnail.reshape(len(hashable), -1)
        has_phash[hashable] = signatures.has_image

    # matched entry ids as an Arrow list column (null for rows not matched), built from the
    # matcher's flat CSR arrays without a Python list per row
    to_match = train_idx[reason[train_idx] == None]  # noqa: E711
    found = matcher.match_batch(rows["caption"].iloc[to_match].astype(str).tolist())
    lengths = np.zeros(n, dtype=np.int32)
    lengths[to_match] = found.counts_per_caption()
    not_matched = np.ones(n, dtype=bool)
    not_matched[to_match] = False
    entries = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)),
        pa.array(found.entry_ids.astype(np.int32)),
        mask=pa.array(not_matched),
    )

    return pa.Table.from_arrays(
        [
            pa.array(np.arange(first_ordinal, first_ordinal + n), pa.int64()),
            pa.array(rows["id"], pa.string()),
            pa.array(rows["shard"], pa.string()),
            pa.array(np.full(n, from_pair_table), pa.bool_()),
            pa.array(rows["split"], pa.string()),
            pa.array(rows["sha256"], pa.string()),
            pa.array(phash, pa.uint64(), mask=~has_phash),
            _thumbnail_column(thumbs, has_phash),
            pa.array(reason, pa.string()),
            pa.array(detail, pa.string()),
            entries,
        ],
        schema=STATE_SCHEMA,
    )
