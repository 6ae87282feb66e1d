"""Stage `gate_curated`: Great Expectations suite over the curate output.

Reads `layout.curated`, `layout.curation_removed`, `layout.curation_report`, the entry list
`layout.curate_dir/metadata.json` and (for the captions of pairs balancing dropped)
`layout.pairs`; params: `gate`. Writes `layout.gate_dir("curated")/summary.json` and data
docs. Checks schema, no duplicate train image, no train image shared with eval, the
accounting identity, and that each entry's kept count is within a Bernstein bound of what
MetaCLIP balancing with the report's t implies (re-matched here, not trusted from curate).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pandas as pd

from tasks.curate import metadata_path
from tasks.curation.matching import EntryMatcher
from tasks.curation.metadata import read_metadata
from tasks.errors import StageError
from tasks.gates.runner import run_gate
from tasks.gates.suites import balance_frame, curated_batches
from tasks.gates.tables import read_any, read_json
from tasks.layout import Layout
from tasks.params import PipelineParams
from tasks.stage_cli import stage_main


def balancing_pool(
    curated: pd.DataFrame, removed: pd.DataFrame, pairs: pd.DataFrame
) -> tuple[list[str], np.ndarray]:
    """Captions of every pair that entered balancing, and which of them were kept.

    That pool is the kept train rows plus the rows removed as `balanced_out` (rows with no
    entry match contribute nothing to any entry's count either way).
    """
    train_caps = curated.loc[curated["split"] == "train", "caption"].astype(str).tolist()
    dropped_ids = removed.loc[removed["reason"] == "balanced_out", "id"]
    caption_by_id = pairs.drop_duplicates("id").set_index("id")["caption"]
    unknown = dropped_ids[~dropped_ids.isin(caption_by_id.index)]
    if len(unknown):
        raise StageError(
            f"{len(unknown)} balanced_out ids are not in the pair table, e.g. "
            f"{unknown.head(3).tolist()}: rerun curate on the current ingest output"
        )
    dropped_caps = caption_by_id.loc[dropped_ids].astype(str).tolist()
    kept = np.array([True] * len(train_caps) + [False] * len(dropped_caps), dtype=bool)
    return train_caps + dropped_caps, kept


def run(params: PipelineParams, layout: Layout) -> dict[str, Any]:
    """Validate the curated table against the curation report; return the gate summary."""
    curated = read_any(layout.curated, "curated table")
    removed = read_any(layout.curation_removed, "removed table")
    report = read_json(layout.curation_report, "curation report")
    if "t" not in report:
        raise StageError(f"{layout.curation_report} has no 't': rerun curate")
    entries = read_metadata(metadata_path(layout))
    pairs = read_any(layout.pairs, "pair table")[["id", "caption"]]

    captions, kept = balancing_pool(curated, removed, pairs)
    matcher = EntryMatcher(entries, lowercase=bool(report.get("lowercase", False)))
    matches = matcher.match_all(captions, progress=len(captions) > 2000)
    balance = balance_frame(matches, kept, entries, int(report["t"]), params.gate.balance_alpha)
    return run_gate(
        "curated",
        lambda: curated_batches(curated, removed, report, balance, params.gate),
        layout.gate_dir("curated"),
    )


def main(argv: list[str] | None = None) -> int:
    return stage_main("gate_curated", run, argv)


if __name__ == "__main__":
    sys.exit(main())
