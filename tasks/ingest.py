"""Ingest: bundled sources and user data -> the canonical pair table and the quarantine table.

Reads params `ingest.*` and `seed`. Writes `layout.pairs` (PAIR_SCHEMA), `layout.quarantine`
(QUARANTINE_SCHEMA) and `layout.ingest_report` (JSON). The same params give byte-identical
Parquet files: every random choice is drawn from generators seeded by `seed` and the source name,
and rows keep a fixed order (digits, textiles, shapes, user).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from tasks.errors import StageError
from tasks.layout import Layout
from tasks.pair_table import (
    INGEST_QUARANTINE_REASONS,
    PAIR_COLUMNS,
    QUARANTINE_COLUMNS,
    write_pairs,
    write_quarantine,
)
from tasks.params import PipelineParams
from tasks.sources import (
    SourceResult,
    generate_shape_pairs,
    load_digit_pairs,
    load_textile_pairs,
    load_user_pairs,
)
from tasks.sources.records import SPLITS, quarantine_row
from tasks.stage_cli import stage_main


class IngestReport(BaseModel):
    """What ingest read and wrote; `rows_in == pairs + quarantined_total` always holds."""

    rows_in: int
    pairs: int
    quarantined_total: int
    quarantined: dict[str, int]  # every ingest reason code, zero included
    rows_in_by_source: dict[str, int]
    pairs_by_source_split: dict[str, dict[str, int]]
    shapes_duplicates: dict[str, dict[str, str]]  # {"exact"|"near": {copy id: original id}}


def _under_root(root: Path, path: str) -> Path:
    """User paths are relative to the project root unless absolute."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def collect_sources(params: PipelineParams, layout: Layout) -> list[SourceResult]:
    """Run every enabled source, in the fixed order that keeps the output deterministic."""
    ing = params.ingest
    limits = {
        "min_side": ing.min_image_side,
        "max_side": ing.max_image_side,
        "max_bytes": ing.max_image_bytes,
    }
    results: list[SourceResult] = []
    if ing.digits.enabled:
        results.append(load_digit_pairs(ing.digits, params.seed, ing.max_image_side))
    if ing.textiles.enabled:
        results.append(load_textile_pairs(ing.textiles, params.seed, **limits))
    if ing.shapes.enabled:
        results.append(generate_shape_pairs(ing.shapes, params.seed, ing.max_image_side))
    if ing.user.images_dir is not None and ing.user.captions_file is not None:
        results.append(
            load_user_pairs(
                _under_root(layout.root, ing.user.images_dir),
                _under_root(layout.root, ing.user.captions_file),
                max_caption_chars=ing.max_caption_chars,
                **limits,
            )
        )
    if not results:
        raise StageError(
            "ingest has no source: enable one of ingest.digits / textiles / shapes "
            "or set ingest.user.images_dir and ingest.user.captions_file"
        )
    return results


def merge_sources(
    results: list[SourceResult],
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """All pairs and quarantine rows; a pair whose id an earlier source used is quarantined."""
    pairs: list[dict[str, Any]] = []
    quarantine: list[dict[str, str]] = []
    seen: set[str] = set()
    for result in results:
        quarantine.extend(result.quarantine)
        for row in result.pairs:
            if row["id"] in seen:
                detail = f"id {row['id']!r} was already used by an earlier source"
                quarantine.append(quarantine_row(row["id"], row["source"], "duplicate_id", detail))
                continue
            seen.add(row["id"])
            pairs.append(row)
    return pairs, quarantine


def build_report(
    results: list[SourceResult], pairs: list[dict[str, Any]], quarantine: list[dict[str, str]]
) -> IngestReport:
    """Counts for people and gates; raises if any row read was neither kept nor quarantined."""
    rows_in = sum(r.rows_in for r in results)
    if rows_in != len(pairs) + len(quarantine):
        # A source lost or invented rows: a bug, never a state to write to disk.
        raise RuntimeError(
            f"ingest row accounting broken: rows_in={rows_in} != "
            f"pairs={len(pairs)} + quarantined={len(quarantine)}"
        )
    reasons = Counter(q["reason"] for q in quarantine)
    by_split: dict[str, dict[str, int]] = {r.source: dict.fromkeys(SPLITS, 0) for r in results}
    for row in pairs:
        by_split[row["source"]][row["split"]] += 1
    shapes = next((r for r in results if r.source == "shapes"), None)
    return IngestReport(
        rows_in=rows_in,
        pairs=len(pairs),
        quarantined_total=len(quarantine),
        quarantined={code: reasons.get(code, 0) for code in INGEST_QUARANTINE_REASONS},
        rows_in_by_source={r.source: r.rows_in for r in results},
        pairs_by_source_split=by_split,
        shapes_duplicates=shapes.extra["duplicates"] if shapes else {"exact": {}, "near": {}},
    )


def run(params: PipelineParams, layout: Layout) -> IngestReport:
    """Ingest every enabled source; write the pair table, the quarantine table and the report."""
    results = collect_sources(params, layout)
    pairs, quarantine = merge_sources(results)
    report = build_report(results, pairs, quarantine)
    write_pairs(pd.DataFrame(pairs, columns=PAIR_COLUMNS), layout.pairs)
    write_quarantine(pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS), layout.quarantine)
    layout.ingest_report.parent.mkdir(parents=True, exist_ok=True)
    tmp = layout.ingest_report.with_suffix(".json.tmp")
    tmp.write_text(report.model_dump_json(indent=2) + "\n")
    tmp.replace(layout.ingest_report)
    return report


def main(argv: list[str] | None = None) -> int:
    return stage_main("ingest", run, argv)


if __name__ == "__main__":
    sys.exit(main())
