"""The streamed, sharded curation driver: `curate_pool`.

    curate_pool(inputs: list[Path], out_dir: Path, config: CurateParams, *,
                pair_table=None, curated_table=None, root=Path("."),
                prior_quarantine=None, plot_paths=None, registry_url=None) -> report dict

`inputs` are files or folders of webdataset / img2dataset tar shards and Parquet tables
(read by tasks.curation.shards.iter_pool; text-only pools work: rows without an image skip
every image step). `pair_table` is the pipeline's own pair table, read first with its ids
kept; its kept rows also go to `curated_table`. Memory stays
bounded by the chunk size plus a compact per-row state (no image is held beyond its chunk):

  pass 0  ids + captions: a bottom-k sample by id hash for PMI bigrams, and the label set;
          then the MetaCLIP entry list (`out_dir/metadata.json`).
  pass 1  per chunk: basic + language filters, pHash, MetaCLIP matching -> state on disk.
  global  duplicate ids, eval copies (exact, near), exact and near duplicates, SemDeDup and
          the CLIP-score filter (with `score_model`), entry counts, balancing.
  pass 2  the kept rows -> `out_dir/shards/part-*.parquet` (+ manifest.json), and the kept
          rows of `pair_table` -> `curated_table` (the pair table downstream stages read).

Also written: `kept_ids.parquet` (id, split, shard: filter a pool without resharding),
`removed.parquet` (id, reason, detail), `quarantine.parquet` (hostile shard members),
`balance.parquet` (id, matched entries, kept: what gate_curated re-checks). The report
checks rows_in = kept + filtered + quarantined before anything is returned.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from tasks.curation.balancing import (
    EntryCounts,
    balance_flat,
    entry_probabilities,
    id_hashes,
    t_for_tail_share,
    tail_share,
)
from tasks.curation.clip_score import CLIP_SCORE_REASONS
from tasks.curation.dedup import EXACT_DEDUP_REASONS
from tasks.curation.filters import FILTER_REASONS
from tasks.curation.language import LANGUAGE_REASONS
from tasks.curation.matching import EntryMatcher
from tasks.curation.metadata import CaptionSample, build_metadata, mine_bigrams, write_metadata
from tasks.curation.model_steps import run_model_steps
from tasks.curation.near_dup import NEAR_DUP_REASONS
from tasks.curation.pool_reader import read_inputs
from tasks.curation.pool_steps import PoolState, run_dedup_steps
from tasks.curation.report import build_pool_report, write_entry_count_plot
from tasks.curation.row_state import STATE_SCHEMA, check_splits, chunk_state
from tasks.curation.semdedup import SEMDEDUP_REASONS
from tasks.curation.shard_output import KeptRowWriter
from tasks.pair_table import QUARANTINE_SCHEMA
from tasks.params import CurateParams

REMOVED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
    ]
)
KEPT_IDS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("pair_table", pa.bool_(), nullable=False),  # a row of the pipeline's pairs
    ]
)
BALANCE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("entries", pa.list_(pa.int32()), nullable=False),
        pa.field("kept", pa.bool_(), nullable=False),
    ]
)

# Every reason code a filtered row can carry, in step order (each module declares its own).
CURATE_REASONS = {
    **FILTER_REASONS,
    **LANGUAGE_REASONS,
    "duplicate_id": "an earlier row of the pool has the same id",
    **EXACT_DEDUP_REASONS,
    **NEAR_DUP_REASONS,
    **SEMDEDUP_REASONS,
    **CLIP_SCORE_REASONS,
    "no_entry_match": "the caption matches no metadata entry (MetaCLIP drops it)",
    "balanced_out": "dropped by MetaCLIP balancing: every matched entry is over threshold t",
}
STATE_FILE = "state.parquet"


def metadata_path(out_dir: Path) -> Path:
    return Path(out_dir) / "metadata.json"


def build_entries(
    pair_table: Path | None, inputs: Sequence[Path], params: CurateParams, root: Path
) -> tuple[list[str], dict[str, Any]]:
    """Pass 0: mine bigrams on an id-hash sample and collect labels; return the entry list."""
    sample = CaptionSample(params.bigram_sample_rows)
    labels: set[str] = set()
    if params.bigram_sample_rows or params.include_class_names:
        for _, chunk in read_inputs(
            pair_table, inputs, params.chunk_rows, params.max_member_bytes, with_images=False
        ):
            rows = chunk.rows.select(["id", "caption", "label", "split"]).to_pandas()
            train = rows[rows["split"] == "train"]
            sample.add(train["id"], train["caption"].astype(str))
            labels.update(str(v) for v in rows["label"].dropna().unique())
    sampled = sample.captions()
    bigrams = mine_bigrams(
        sampled,
        params.bigram_min_count,
        params.bigram_min_pmi,
        params.bigram_max_entries,
        params.lowercase,
    )
    entries = build_metadata(params, labels, root, [b["bigram"] for b in bigrams])
    info = {
        "bigram_sample_captions": len(sampled),
        "bigrams": len(bigrams),
        "top_bigrams": bigrams[:10],
        "class_names": len(labels),
    }
    return entries, info


def _scan(
    pair_table: Path | None,
    inputs: Sequence[Path],
    params: CurateParams,
    matcher: EntryMatcher,
    work: Path,
    quarantine_path: Path,
) -> tuple[int, int]:
    """Pass 1: the state of every row to `work/state.parquet`; (rows read, rows quarantined)."""
    ordinal = quarantined = 0
    with (
        pq.ParquetWriter(work / STATE_FILE, STATE_SCHEMA) as state,
        pq.ParquetWriter(quarantine_path, QUARANTINE_SCHEMA) as quarantine,
    ):
        chunks = read_inputs(
            pair_table, inputs, params.chunk_rows, params.max_member_bytes, with_images=True
        )
        for from_pairs, chunk in tqdm(chunks, desc="curate pass 1", unit="chunk", leave=False):
            if chunk.quarantine.num_rows:
                quarantine.write_table(chunk.quarantine.cast(QUARANTINE_SCHEMA))
                quarantined += chunk.quarantine.num_rows
            if not chunk.rows.num_rows:
                continue
            rows = chunk.rows.to_pandas()
            check_splits(rows, chunk.shard)
            state.write_table(chunk_state(rows, ordinal, params, matcher, from_pairs))
            ordinal += len(rows)
    return ordinal, quarantined


def _load_state(work: Path) -> tuple[PoolState, pa.ChunkedArray]:
    table = pq.read_table(work / STATE_FILE)
    phash = table.column("phash")
    state = PoolState(
        ids=table.column("id").to_numpy(zero_copy_only=False).astype(object),
        split=table.column("split").to_numpy(zero_copy_only=False).astype(object),
        sha256=table.column("sha256").to_numpy(zero_copy_only=False).astype(object),
        phash=phash.fill_null(0).to_numpy().astype(np.uint64),
        has_phash=phash.is_valid().to_numpy(zero_copy_only=False),
        thumbnails=_thumbnails(table.column("thumbnail")),
        reason=table.column("reason").to_numpy(zero_copy_only=False).astype(object),
        detail=table.column("detail").to_numpy(zero_copy_only=False).astype(object),
    )
    return state, table.column("entries")


def _thumbnails(column: pa.ChunkedArray) -> np.ndarray:
    """The fixed-size thumbnail column as uint8 [N, 8, 8, 3] (zeros where null).

    Only chunks with images are copied: np.zeros pages that are never written stay out of
    memory, so a text-only pool costs nothing here.
    """
    width = column.type.byte_width
    out = np.zeros((len(column), width), dtype=np.uint8)
    pos = 0
    for chunk in column.chunks:
        n = len(chunk)
        data = chunk.buffers()[1]
        if chunk.null_count < n and data is not None:
            flat = np.frombuffer(data, dtype=np.uint8)[chunk.offset * width :][: n * width]
            valid = chunk.is_valid().to_numpy(zero_copy_only=False)
            out[pos : pos + n][valid] = flat.reshape(n, width)[valid]
        pos += n
    return out.reshape(-1, 8, 8, 3)


def _flat(entries: pa.ChunkedArray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pair index into `rows`, entry id) of the matches of `rows`."""
    picked = entries.take(pa.array(rows, pa.int64())).combine_chunks()
    picked = picked.fill_null([]) if picked.null_count else picked
    pair_idx = pc.list_parent_indices(picked).to_numpy().astype(np.int64)
    entry_idx = pc.list_flatten(picked).to_numpy().astype(np.int64)
    return pair_idx, entry_idx


def _balance(
    state: PoolState,
    entries_col: pa.ChunkedArray,
    entries: list[str],
    params: CurateParams,
    balance_path: Path,
) -> dict[str, Any]:
    """MetaCLIP balancing over the surviving train rows (last, after dedup)."""
    alive = state.alive_train()
    pair_idx, entry_idx = _flat(entries_col, alive)
    counts_before = EntryCounts.from_flat(entry_idx, len(entries)).counts
    if params.balance_t is not None:
        t, t_source = params.balance_t, "curate.balance_t"
    else:
        t = t_for_tail_share(counts_before, params.balance_tail_share)
        t_source = f"curate.balance_tail_share = {params.balance_tail_share}"
    p = entry_probabilities(counts_before, t)
    kept = balance_flat(id_hashes(state.ids[alive]), pair_idx, entry_idx, p, params.seed)
    matched = np.bincount(pair_idx, minlength=len(alive)) > 0
    if not params.keep_unmatched:
        rows = alive[~matched]
        state.remove(
            rows,
            "no_entry_match",
            [f"caption matched none of {len(entries)} entries"] * len(rows),
            [],
        )
    out = matched & ~kept
    first_entry = np.full(len(alive), -1, dtype=np.int64)
    first_entry[pair_idx[::-1]] = entry_idx[::-1]  # lowest-position match of each pair
    n_matched = np.bincount(pair_idx, minlength=len(alive))
    rows = alive[out]
    state.remove(
        rows,
        "balanced_out",
        [
            f"matched {n} entries, e.g. {entries[e]!r} (p={p[e]:.3g}); none drew u < p"
            for n, e in zip(n_matched[out], first_entry[out], strict=True)
        ],
        [],
    )
    kept_pairs = kept[pair_idx]
    counts_after = np.bincount(entry_idx[kept_pairs], minlength=len(entries)).astype(np.int64)
    _write_balance_table(entries_col, alive[matched], kept[matched], state, balance_path)
    return {
        "t": int(t),
        "t_source": t_source,
        "tail_share_at_t": round(tail_share(counts_before, t), 6),
        "counts_before": counts_before,
        "counts_after": counts_after,
        "pairs_balanced": int(matched.sum()),
    }


def _write_balance_table(
    entries_col: pa.ChunkedArray, rows: np.ndarray, kept: np.ndarray, state: PoolState, path: Path
) -> None:
    table = pa.Table.from_arrays(
        [
            pa.array(state.ids[rows], pa.string()),
            entries_col.take(pa.array(rows, pa.int64())).combine_chunks(),
            pa.array(kept, pa.bool_()),
        ],
        schema=BALANCE_SCHEMA,
    )
    pq.write_table(table, path)


def _write_kept_ids(state: PoolState, keep: np.ndarray, work: Path, path: Path) -> None:
    """id, split, shard, pair_table of every kept row: filter a pool without resharding."""
    kept_rows = np.flatnonzero(keep)
    origin = pq.read_table(work / STATE_FILE, columns=["shard", "pair_table"])
    take = pa.array(kept_rows, pa.int64())
    table = pa.Table.from_arrays(
        [
            pa.array(state.ids[kept_rows], pa.string()),
            pa.array(state.split[kept_rows], pa.string()),
            origin.column("shard").take(take).combine_chunks(),
            origin.column("pair_table").take(take).combine_chunks(),
        ],
        schema=KEPT_IDS_SCHEMA,
    )
    pq.write_table(table, path)


def _write_removed(state: PoolState, path: Path) -> pd.DataFrame:
    rows = np.flatnonzero(pd.notna(state.reason))
    frame = pd.DataFrame(
        {"id": state.ids[rows], "reason": state.reason[rows], "detail": state.detail[rows]}
    )
    pq.write_table(pa.Table.from_pandas(frame, schema=REMOVED_SCHEMA, preserve_index=False), path)
    return frame


def _write_kept(
    pair_table: Path | None,
    inputs: Sequence[Path],
    params: CurateParams,
    keep: np.ndarray,
    out_dir: Path,
    curated_table: Path | None,
) -> None:
    """Pass 2: stream the pool again and write the kept rows."""
    ordinal = 0
    with KeptRowWriter(out_dir / "shards", params.shard_rows, curated_table) as writer:
        chunks = read_inputs(
            pair_table, inputs, params.chunk_rows, params.max_member_bytes, with_images=True
        )
        for from_pairs, chunk in tqdm(chunks, desc="curate pass 2", unit="chunk", leave=False):
            n = chunk.rows.num_rows
            mask = keep[ordinal : ordinal + n]
            ordinal += n
            if mask.any():
                writer.write(chunk.rows.filter(pa.array(mask)), to_curated=from_pairs)
    if ordinal != len(keep):
        raise RuntimeError(
            f"pass 2 read {ordinal} rows but pass 1 read {len(keep)}: an input changed during "
            "curation; rerun curate"
        )


def _load_scoring_model(
    params: CurateParams, root: Path, registry_url: str | None, artifacts_uri: str, device: str
) -> Any:
    """The score model (imports torch only when a model step runs)."""
    from tasks.curation.scoring_model import load_scoring_model
    from tasks.device import pick_device

    return load_scoring_model(
        str(params.score_model),
        root,
        registry_url or "sqlite:///store/registry.db",
        artifacts_uri=artifacts_uri,
        device=str(pick_device(device)),
    )


def curate_pool(
    inputs: Sequence[Path],
    out_dir: Path,
    config: CurateParams,
    *,
    pair_table: Path | None = None,
    curated_table: Path | None = None,
    root: Path = Path("."),
    prior_quarantine: pd.DataFrame | None = None,
    plot_paths: tuple[Path, Path] | None = None,
    registry_url: str | None = None,
    artifacts_uri: str = "store/artifacts",
    device: str = "cpu",
) -> dict[str, Any]:
    """Curate the pool `inputs` into `out_dir`; return the report (identity checked).

    `prior_quarantine` (QUARANTINE_SCHEMA rows, e.g. ingest's) counts in rows_in.
    `pair_table`: the pipeline's pair table (ids kept); its kept rows go to `curated_table`.
    `plot_paths`: (CSV, PNG) of the head/tail entry-count figure. `registry_url` and
    `artifacts_uri` resolve a `score_model` of "production"; `device` ("auto", "cpu",
    "cuda") runs it.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    out_dir = Path(out_dir)
    work = out_dir / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    inputs = [Path(p) for p in inputs]

    entries, metadata_info = build_entries(pair_table, inputs, config, Path(root))
    write_metadata(entries, metadata_path(out_dir))
    matcher = EntryMatcher(entries, lowercase=config.lowercase)
    timings["pass0_metadata_s"] = time.perf_counter() - started

    mark = time.perf_counter()
    rows_read, _ = _scan(pair_table, inputs, config, matcher, work, out_dir / "quarantine.parquet")
    timings["pass1_scan_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    state, entries_col = _load_state(work)
    state.steps["basic_filters"] = "ran"
    state.steps["caption_language"] = (
        "ran" if config.language_allowed else "skipped: curate.language_allowed is empty"
    )
    run_dedup_steps(state, config)
    model_summary = run_model_steps(
        state,
        config,
        lambda: read_inputs(pair_table, inputs, config.chunk_rows, config.max_member_bytes),
        lambda: _load_scoring_model(config, Path(root), registry_url, artifacts_uri, device),
        work,
    )
    balance = _balance(state, entries_col, entries, config, out_dir / "balance.parquet")
    timings["global_steps_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    keep = pd.isna(state.reason)
    _write_kept(pair_table, inputs, config, keep, out_dir, curated_table)
    _write_kept_ids(state, keep, work, out_dir / "kept_ids.parquet")
    removed = _write_removed(state, out_dir / "removed.parquet")
    timings["pass2_write_s"] = time.perf_counter() - mark
    timings["total_s"] = time.perf_counter() - started

    pool_q = pq.read_table(out_dir / "quarantine.parquet").to_pandas()
    quarantine = pd.concat(
        [q for q in [prior_quarantine] if q is not None and len(q)] + [pool_q], ignore_index=True
    )
    report = build_pool_report(
        rows_read=rows_read,
        quarantine=quarantine,
        kept_split=state.split[keep],
        removed=removed,
        entries=entries,
        balance=balance,
        steps=state.steps,
        examples=state.examples,
        params=config,
        metadata_info=metadata_info,
        model_summary=model_summary,
        inputs=[str(p) for p in ([pair_table] if pair_table else []) + inputs],
        timings={k: round(v, 3) for k, v in timings.items()},
    )
    if plot_paths is not None:
        write_entry_count_plot(
            balance["counts_before"], balance["counts_after"], balance["t"], *plot_paths
        )
    shutil.rmtree(work, ignore_errors=True)
    return report
