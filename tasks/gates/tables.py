"""Reading the tables a gate checks, leniently: a missing column is the gate's finding,
not a crash, so these read whatever columns the file has."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from tasks.errors import StageError


def read_any(path: Path, what: str) -> pd.DataFrame:
    """Read a Parquet file with whatever columns it has; StageError if it is absent."""
    if not path.exists():
        raise StageError(f"{what} {path} not found: run the stage that writes it first")
    return pq.read_table(path).to_pandas()


def read_json(path: Path, what: str) -> Any:
    """Read a JSON report; StageError if it is absent or not JSON."""
    if not path.exists():
        raise StageError(f"{what} {path} not found: run the stage that writes it first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StageError(f"{what} {path} is not valid JSON: {exc}") from None
