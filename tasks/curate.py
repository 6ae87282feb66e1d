"""Stage `curate`: DataComp filters, dedup, MetaCLIP metadata, matching and balancing, streamed.

Reads `layout.pairs` (the ingest pair table) plus every `curate.pool` input (files or folders
of webdataset / img2dataset tar shards and Parquet tables), chunk by chunk with bounded
memory, and `layout.quarantine` (params: `curate`). See tasks.curation.stream for the passes.

Writes under `layout.curate_dir`: `curated.parquet` (the kept rows of the pair table: curated
train rows plus every eval row; what teacher, reinforce, finetune and evaluate read),
`shards/` (every kept row, pair table and pool alike, in part-*.parquet shards: large pools
are used from here), `kept_ids.parquet`, `removed.parquet` (id, reason, detail),
`quarantine.parquet`, `balance.parquet` and `metadata.json` (the entry list); plus
`layout.curation_report`, the entry-count plot (CSV + PNG) and the per-reason counts (CSV)
under `layout.plots_dir`.

Only train rows are curated; a row is removed by the first step that rejects it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from tasks.curation.report import write_reason_plot, write_report
from tasks.curation.stream import CURATE_REASONS, REMOVED_SCHEMA, curate_pool
from tasks.errors import StageError
from tasks.layout import Layout
from tasks.pair_table import QUARANTINE_COLUMNS
from tasks.params import PipelineParams
from tasks.stage_cli import stage_main

__all__ = ["CURATE_REASONS", "REMOVED_SCHEMA", "run", "main"]


def metadata_path(layout: Layout) -> Path:
    """Where curate writes the MetaCLIP entry list (gate_curated reads it back)."""
    return layout.curate_dir / "metadata.json"


def shards_dir(layout: Layout) -> Path:
    """Every kept row, as part-*.parquet shards (POOL_SCHEMA) plus manifest.json."""
    return layout.curate_dir / "shards"


def kept_ids_path(layout: Layout) -> Path:
    """The kept ids (id, split, shard): filter a pool by id without resharding it."""
    return layout.curate_dir / "kept_ids.parquet"


def balance_path(layout: Layout) -> Path:
    """Every pair that entered balancing: id, matched entry ids, kept."""
    return layout.curate_dir / "balance.parquet"


def reason_plot_path(layout: Layout) -> Path:
    """reason,rows CSV of the filter and quarantine reasons (a DVC bar plot)."""
    return layout.plots_dir / "curation_reasons.csv"


def entry_plot_paths(layout: Layout) -> tuple[Path, Path]:
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


def pool_inputs(params: PipelineParams, layout: Layout) -> list[Path]:
    """Each `curate.pool` input (relative paths are under the project root)."""
    extra = [Path(p) if Path(p).is_absolute() else layout.root / p for p in params.curate.pool]
    missing = [str(p) for p in extra if not p.exists()]
    if missing:
        raise StageError(f"curate.pool inputs not found: {missing}; fix params.yaml")
    return extra


def run(params: PipelineParams, layout: Layout) -> dict[str, Any]:
    """Curate the pair table and the pool inputs; return the curation report."""
    if not layout.pairs.exists():
        raise StageError(f"{layout.pairs} not found: run ingest first")
    quarantine = _read_quarantine(layout)
    report = curate_pool(
        pool_inputs(params, layout),
        layout.curate_dir,
        params.curate,
        pair_table=layout.pairs,
        curated_table=layout.curated,
        root=layout.root,
        prior_quarantine=quarantine,
        plot_paths=entry_plot_paths(layout),
        registry_url=params.storage.registry_url,
        artifacts_uri=params.storage.artifacts_uri,
        device=params.device,
    )
    write_report(report, layout.curation_report)
    write_reason_plot(report, reason_plot_path(layout))
    return report


def main(argv: list[str] | None = None) -> int:
    return stage_main("curate", run, argv)


if __name__ == "__main__":
    sys.exit(main())
