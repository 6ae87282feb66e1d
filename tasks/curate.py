"""Stage `curate`: DataComp basic filters, exact dedup, MetaCLIP matching and balancing.

Reads `layout.pairs`, `layout.quarantine` (params: `curate`). Writes `layout.curated` (the
kept train rows plus every eval row, unchanged), `layout.curation_removed` (id, reason,
detail for each filtered train row), `layout.curate_dir/metadata.json` (the entry list),
`layout.curation_report`, and the entry-count plot (CSV + PNG) under `layout.plots_dir`.

Only train rows are curated. Order: basic filters -> eval copies -> exact duplicates ->
MetaCLIP matching -> balancing; a row is removed by the first step that rejects it.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.curation.balancing import balance, entry_counts, entry_probabilities
from tasks.curation.dedup import eval_copies, exact_duplicates
from tasks.curation.filters import basic_filter
from tasks.curation.matching import EntryMatcher
from tasks.curation.metadata import build_metadata, write_metadata
from tasks.curation.report import build_report, write_entry_count_plot, write_report
from tasks.errors import StageError
from tasks.layout import Layout
from tasks.pair_table import QUARANTINE_COLUMNS, read_pairs, write_pairs, write_table
from tasks.params import PipelineParams
from tasks.stage_cli import stage_main

REMOVED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
    ]
)

# Reason codes of steps 2-5 (step 1's are tasks.curation.filters.FILTER_REASONS).
CURATE_REASONS = {
    "eval_copy": "the train image is byte-identical to an eval image",
    "exact_duplicate": "another train row with a smaller id has the same image sha256",
    "no_entry_match": "the caption matches no metadata entry (MetaCLIP drops it)",
    "balanced_out": "dropped by MetaCLIP balancing: every matched entry is over threshold t",
}

SPLITS = ("train", "eval")


def metadata_path(layout: Layout):
    """Where curate writes the MetaCLIP entry list (gate_curated reads it back)."""
    return layout.curate_dir / "metadata.json"


def entry_plot_paths(layout: Layout):
    """(CSV, PNG) of the head/tail entry-count figure."""
    return (
        layout.plots_dir / "curation_entry_counts.csv",
        layout.plots_dir / "curation_entry_counts.png",
    )


def _read_quarantine(layout: Layout) -> pd.DataFrame:
    if not layout.quarantine.exists():
        raise StageError(f"{layout.quarantine} not found: run ingest first")
    frame = pq.read_table(layout.quarantine).to_pandas()
    missing = set(QUARANTINE_COLUMNS) - set(frame.columns)
    if missing:
        raise StageError(f"{layout.quarantine} lacks columns {sorted(missing)}")
    return frame


def _removed(ids: pd.Series, reason: str, details: list[str] | pd.Series) -> pd.DataFrame:
    return pd.DataFrame({"id": list(ids), "reason": reason, "detail": list(details)})


def _describe_matches(entry_ids: list[int], entries: list[str], p: np.ndarray) -> str:
    shown = ", ".join(f"{entries[e]!r} (p={p[e]:.3g})" for e in entry_ids[:5])
    more = f" and {len(entry_ids) - 5} more" if len(entry_ids) > 5 else ""
    return f"matched {shown}{more}; none drew rand() < p"


def run(params: PipelineParams, layout: Layout) -> dict[str, Any]:
    """Curate the train split; return the curation report."""
    cp = params.curate
    pairs = read_pairs(layout.pairs)
    quarantine = _read_quarantine(layout)
    bad_split = ~pairs["split"].isin(SPLITS)
    if bad_split.any():
        examples = pairs.loc[bad_split, ["id", "split"]].head(3).to_dict("records")
        raise StageError(
            f"{int(bad_split.sum())} rows have a split outside {SPLITS}, e.g. {examples}: "
            "fix ingest (gate_raw checks this too)"
        )
    train = pairs[pairs["split"] == "train"]
    eval_rows = pairs[pairs["split"] == "eval"]
    removed: list[pd.DataFrame] = []

    # 1. DataComp basic filters
    verdict = basic_filter(train, cp)
    failed = verdict["reason"].notna()
    for reason, group in verdict[failed].groupby("reason"):
        removed.append(_removed(train.loc[group.index, "id"], reason, group["detail"]))
    train = train[~failed]

    # 2. eval leakage first (it is the more serious reason), then exact duplicates
    leaked = eval_copies(train, eval_rows)
    removed.append(
        _removed(
            train.loc[leaked, "id"],
            "eval_copy",
            ["image sha256 equals an eval image's"] * int(leaked.sum()),
        )
    )
    train = train[~leaked]
    if cp.exact_dedup:
        dups = exact_duplicates(train)
        is_dup = dups["duplicate"].astype(bool)
        removed.append(
            _removed(
                train.loc[is_dup, "id"],
                "exact_duplicate",
                [f"same sha256 as kept id {k}" for k in dups.loc[is_dup, "kept_id"]],
            )
        )
        train = train[~is_dup]

    # 3-4. MetaCLIP metadata and substring matching
    entries = build_metadata(cp, pairs["label"].dropna().unique(), layout.root)
    write_metadata(entries, metadata_path(layout))
    matcher = EntryMatcher(entries, lowercase=cp.lowercase)
    matches = matcher.match_all(train["caption"].tolist(), progress=len(train) > 2000)

    # 5. balancing over global counts
    counts_before = entry_counts(matches, len(entries))
    rng = np.random.default_rng(cp.seed)
    kept = balance(matches, counts_before, cp.balance_t, rng)
    unmatched = np.array([len(m) == 0 for m in matches], dtype=bool)
    if cp.keep_unmatched:
        kept |= unmatched
    else:
        removed.append(
            _removed(
                train["id"][unmatched],
                "no_entry_match",
                [f"caption matched none of {len(entries)} entries"] * int(unmatched.sum()),
            )
        )
    p = entry_probabilities(counts_before, cp.balance_t)
    sampled_out = ~kept & ~unmatched
    removed.append(
        _removed(
            train["id"][sampled_out],
            "balanced_out",
            [
                _describe_matches(m, entries, p)
                for m, out in zip(matches, sampled_out, strict=True)
                if out
            ],
        )
    )
    counts_after = entry_counts([m for m, k in zip(matches, kept, strict=True) if k], len(entries))
    train = train[kept]

    # 6. outputs; the report checks rows_in == kept + filtered + quarantined before writing
    removed_frame = pd.concat(removed, ignore_index=True)
    report = build_report(
        num_pairs=len(pairs),
        quarantine=quarantine,
        kept_train=len(train),
        kept_eval=len(eval_rows),
        removed=removed_frame,
        entries=entries,
        counts_before=counts_before,
        counts_after=counts_after,
        t=cp.balance_t,
        lowercase=cp.lowercase,
        seed=cp.seed,
    )
    write_pairs(pd.concat([train, eval_rows], ignore_index=True), layout.curated)
    write_table(removed_frame, layout.curation_removed, REMOVED_SCHEMA)
    write_entry_count_plot(counts_before, counts_after, cp.balance_t, *entry_plot_paths(layout))
    write_report(report, layout.curation_report)
    return report


def main(argv: list[str] | None = None) -> int:
    return stage_main("curate", run, argv)


if __name__ == "__main__":
    sys.exit(main())
