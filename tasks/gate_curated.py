"""Stage `gate_curated`: Great Expectations suite over the curate outputs.

Reads `layout.curated` (the pair table downstream stages train on), the output shards,
`kept_ids.parquet`, `removed.parquet`, `balance.parquet`, the entry list `metadata.json`
and `layout.curation_report`; params: `gate`. Writes `layout.gate_dir("curated")/summary.json`
and data docs. Checks: schema; no exact duplicate image among kept train rows (curated table
and shards); no train image shared with eval; every curated row is a kept id; the matched
entries curate recorded agree with a fresh match of the kept captions; each entry's kept
count lies within a Bernstein bound of what MetaCLIP balancing with the report's t implies
(kept = what is actually in the outputs, not what curate says it kept); row accounting.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from tasks.curate import balance_path, kept_ids_path, metadata_path, shards_dir
from tasks.curation.matching import EntryMatcher
from tasks.curation.metadata import read_metadata
from tasks.errors import StageError
from tasks.gates.runner import run_gate
from tasks.gates.suites import balance_frame, curated_batches
from tasks.gates.tables import read_any, read_json
from tasks.layout import Layout
from tasks.params import PipelineParams
from tasks.stage_cli import stage_main


def read_shard_rows(folder: Path) -> pd.DataFrame:
    """id, split, sha256 of every row in the output shards (images are not read)."""
    files = sorted(folder.glob("part-*.parquet"))
    if not files:
        return pd.DataFrame({"id": [], "split": [], "sha256": []}, dtype="object")
    frames = [pq.read_table(f, columns=["id", "split", "sha256"]).to_pandas() for f in files]
    return pd.concat(frames, ignore_index=True)


def match_check(
    curated: pd.DataFrame, balance: pd.DataFrame, entries: list[str], lowercase: bool
) -> pd.DataFrame:
    """Per curated train row: the entries curate recorded vs a fresh match of its caption."""
    train = curated[curated["split"] == "train"]
    matcher = EntryMatcher(entries, lowercase=lowercase)
    fresh = matcher.match_all(train["caption"].astype(str).tolist(), progress=len(train) > 20_000)
    recorded_by_id = dict(zip(balance["id"], balance["entries"], strict=True))
    recorded = [list(recorded_by_id.get(i, [])) for i in train["id"]]
    return pd.DataFrame(
        {
            "id": train["id"].to_numpy(),
            "recorded": [str(r) for r in recorded],
            "rematched": [str(f) for f in fresh],
            "agree": [list(r) == list(f) for r, f in zip(recorded, fresh, strict=True)],
        }
    )


def entry_balance(
    balance: pd.DataFrame, kept_train_ids: set[str], entries: list[str], t: int, alpha: float
) -> pd.DataFrame:
    """The balance frame with `kept` taken from the outputs, not from curate's own flag."""
    matches = [list(m) for m in balance["entries"]]
    kept = np.array([i in kept_train_ids for i in balance["id"]], dtype=bool)
    return balance_frame(matches, kept, entries, t, alpha)


def run(params: PipelineParams, layout: Layout) -> dict[str, Any]:
    """Validate the curate outputs against each other and the report; return the summary."""
    curated = read_any(layout.curated, "curated table")
    removed = read_any(layout.curation_removed, "removed table")
    kept_ids = read_any(kept_ids_path(layout), "kept id list")
    balance = read_any(balance_path(layout), "balance table")
    report = read_json(layout.curation_report, "curation report")
    if "t" not in report:
        raise StageError(f"{layout.curation_report} has no 't': rerun curate")
    entries = read_metadata(metadata_path(layout))
    shard_rows = read_shard_rows(shards_dir(layout))

    kept_train = set(kept_ids.loc[kept_ids["split"] == "train", "id"])
    # what training can actually read: kept ids plus any train row of the curated table
    kept_train |= set(curated.loc[curated["split"] == "train", "id"])
    balance_table = entry_balance(
        balance, kept_train, entries, int(report["t"]), params.gate.balance_alpha
    )
    matches = match_check(curated, balance, entries, bool(report.get("lowercase", False)))
    from_pairs = kept_ids["pair_table"].astype(bool) if "pair_table" in kept_ids else None
    if from_pairs is None:
        raise StageError(f"{kept_ids_path(layout)} has no pair_table column: rerun curate")
    return run_gate(
        "curated",
        lambda: curated_batches(
            curated,
            removed,
            report,
            balance_table,
            params.gate,
            kept_ids=kept_ids,
            kept_from_pairs=kept_ids[from_pairs.to_numpy(dtype=bool)],
            shard_rows=shard_rows,
            matches=matches,
        ),
        layout.gate_dir("curated"),
    )


def main(argv: list[str] | None = None) -> int:
    return stage_main("gate_curated", run, argv)


if __name__ == "__main__":
    sys.exit(main())
