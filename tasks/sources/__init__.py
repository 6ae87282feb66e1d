"""Data sources for ingest: bundled real sets, a generated compositional set and user folders.

Each source returns a `SourceResult` (pair rows, quarantine rows, rows read); `tasks.ingest`
combines them into the pair and quarantine tables.
"""

from tasks.sources.digits import CLASS_NAMES as DIGIT_CLASS_NAMES
from tasks.sources.digits import load_digit_pairs
from tasks.sources.records import SourceResult
from tasks.sources.shapes import generate_shape_pairs
from tasks.sources.textiles import load_textile_pairs
from tasks.sources.user_folder import load_user_pairs

__all__ = [
    "DIGIT_CLASS_NAMES",
    "SourceResult",
    "generate_shape_pairs",
    "load_digit_pairs",
    "load_textile_pairs",
    "load_user_pairs",
]
