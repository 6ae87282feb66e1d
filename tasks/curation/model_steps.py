"""The steps of the streamed curation that need a model: SemDeDup and the CLIP-score filter.

With `curate.score_model` set ("production" or a model folder), one more streamed pass
embeds the images and captions of the train rows still in (those with an image), into
memory-mapped files under the work dir, chunk by chunk. Then SemDeDup (k-means on the
image embeddings, drop pairs above cosine 1 - epsilon within a cluster) and DataComp's
CLIP-score filter (top fraction or threshold of image-text cosine) run over them. Rows are
passed in id order, so seeds and ties do not depend on shard order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tasks.curation.pool_steps import PoolState
from tasks.curation.shards import PoolChunk
from tasks.params import CurateParams


def _embed_alive(
    chunks: Iterator[tuple[bool, PoolChunk]],
    rows: np.ndarray,
    loaded: Any,
    batch_size: int,
    work: Path,
) -> tuple[np.ndarray, np.ndarray]:
    """Image and text embeddings of the pool rows at ordinals `rows` (sorted), as memmaps."""
    from tasks.curation.scoring_model import embed_pool

    dim = int(loaded.model_cfg["embed_dim"])
    shape = (max(len(rows), 1), dim)
    image_emb = np.lib.format.open_memmap(work / "image_emb.npy", "w+", np.float32, shape)
    text_emb = np.lib.format.open_memmap(work / "text_emb.npy", "w+", np.float32, shape)
    ordinal = 0
    for _, chunk in chunks:
        n = chunk.rows.num_rows
        lo, hi = np.searchsorted(rows, [ordinal, ordinal + n])
        if hi > lo:
            picked = chunk.rows.take(rows[lo:hi] - ordinal)
            img, txt = embed_pool(
                loaded,
                picked.column("image").to_pylist(),
                picked.column("caption").to_pylist(),
                batch_size,
            )
            image_emb[lo:hi], text_emb[lo:hi] = img, txt
        ordinal += n
    image_emb.flush()
    text_emb.flush()
    return image_emb[: len(rows)], text_emb[: len(rows)]


def run_model_steps(
    state: PoolState,
    params: CurateParams,
    read_chunks: Callable[[], Iterator[tuple[bool, PoolChunk]]],
    load_model: Callable[[], Any],
    work: Path,
) -> dict[str, Any]:
    """SemDeDup then the CLIP-score filter over the surviving train rows with an image.

    `read_chunks` streams the pool again (images included); `load_model` returns the scoring
    model. Returns a summary (model, rows embedded, score quantiles) for the report.
    """
    if params.score_model is None:
        state.steps["semantic_duplicate"] = "skipped: no score_model"
        state.steps["low_clip_score"] = "skipped: no score_model"
        return {}
    from tasks.curation.clip_score import clip_score_filter, clip_scores
    from tasks.curation.semdedup import semantic_duplicates

    loaded = load_model()
    alive = state.alive_train()
    rows = alive[state.has_phash[alive]]  # rows with a decoded image
    image_emb, text_emb = _embed_alive(read_chunks(), rows, loaded, params.score_batch_size, work)
    by_id = np.argsort(state.ids[rows].astype(str), kind="stable")
    summary: dict[str, Any] = {"score_model": params.score_model, "rows_embedded": len(rows)}

    if not params.semdedup:
        state.steps["semantic_duplicate"] = "skipped: curate.semdedup is false"
        keep = np.ones(len(rows), dtype=bool)
    else:
        found = semantic_duplicates(
            state.ids[rows[by_id]].tolist(),
            np.asarray(image_emb[by_id]),
            min(params.semdedup_clusters, max(len(rows), 1)),
            params.semdedup_epsilon,
            params.seed,
        )
        dup = found["duplicate"].to_numpy(dtype=bool)
        removed = rows[by_id][dup]
        kept_ids, sims = found["kept_id"].to_numpy()[dup], found["similarity"].to_numpy()[dup]
        state.remove(
            removed,
            "semantic_duplicate",
            [f"cosine {s:.4f} to kept id {k}" for k, s in zip(kept_ids, sims, strict=True)],
            [
                {"id": i, "kept_id": k, "similarity": round(float(s), 4)}
                for i, k, s in zip(state.ids[removed], kept_ids, sims, strict=True)
            ],
        )
        state.steps["semantic_duplicate"] = "ran"
        keep = np.ones(len(rows), dtype=bool)
        keep[by_id[dup]] = False

    scores = clip_scores(np.asarray(image_emb), np.asarray(text_emb))
    scored = by_id[keep[by_id]]  # surviving rows, in id order
    if len(scored):
        summary["clip_score_quantiles"] = {
            str(q): round(float(np.nanquantile(scores[scored], q)), 4)
            for q in (0.05, 0.25, 0.5, 0.75, 0.95)
        }
    if params.score_fraction is None and params.score_threshold is None:
        state.steps["low_clip_score"] = "skipped: neither score_fraction nor score_threshold set"
        return summary
    verdict = clip_score_filter(scores[scored], params.score_fraction, params.score_threshold)
    low = verdict["reason"].notna().to_numpy()
    state.remove(rows[scored[low]], "low_clip_score", verdict["detail"][low].tolist(), [])
    state.steps["low_clip_score"] = "ran"
    return summary
