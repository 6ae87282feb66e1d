"""Stage `gate_raw`: Great Expectations suite over the ingest output.

Reads `layout.pairs`, `layout.quarantine` (params: `gate`). Writes
`layout.gate_dir("raw")/summary.json` and the data docs under `.../docs/index.html`.
Raises GateFailed, naming each failed expectation, unless every expectation passes.
"""

from __future__ import annotations

import sys
from typing import Any

from tasks.gates.runner import run_gate
from tasks.gates.suites import raw_batches
from tasks.gates.tables import read_any
from tasks.layout import Layout
from tasks.params import PipelineParams
from tasks.stage_cli import stage_main


def run(params: PipelineParams, layout: Layout) -> dict[str, Any]:
    """Validate the raw pair table and quarantine table; return the gate summary."""
    pairs = read_any(layout.pairs, "pair table")
    quarantine = read_any(layout.quarantine, "quarantine table")
    return run_gate(
        "raw", lambda: raw_batches(pairs, quarantine, params.gate), layout.gate_dir("raw")
    )


def main(argv: list[str] | None = None) -> int:
    return stage_main("gate_raw", run, argv)


if __name__ == "__main__":
    sys.exit(main())
