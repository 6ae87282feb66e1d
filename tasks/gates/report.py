"""What a gate produced: per-expectation outcomes, summary.json, a readable failure message.

Shared by the GX-backed gates (raw, curated) and the pure-Python eval gate, so every gate's
summary.json has one shape: {gate, passed, evaluated, failed, html, expectations: [...]}.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MAX_EXAMPLES = 5


def jsonable(value: Any) -> Any:
    """A JSON-safe, short version of a value GX reports (numpy scalars, NaN, bytes, long text)."""
    if hasattr(value, "item") and not isinstance(value, list | dict | str | bytes):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            value = str(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value[: MAX_EXAMPLES * 4]]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    text = str(value)
    return text if len(text) <= 200 else text[:197] + "..."


@dataclass
class Outcome:
    """The result of one expectation on one batch."""

    name: str  # e.g. expect_column_values_to_be_unique
    asset: str  # which frame it ran on
    column: str | None
    success: bool
    unexpected_count: int | None = None
    examples: list[Any] = field(default_factory=list)  # a few offending values
    example_ids: list[Any] = field(default_factory=list)  # ids of a few offending rows
    observed: Any = None  # observed_value of table/aggregate expectations
    description: str | None = None
    error: str | None = None  # the expectation raised (e.g. the column is missing)

    def line(self) -> str:
        """One human-readable line naming what failed, how many rows, and examples."""
        target = f"{self.name}({self.column})" if self.column else self.name
        text = f"{target} on {self.asset}"
        if self.description:
            text += f" [{self.description}]"
        if self.error:
            return f"{text}: could not be evaluated: {self.error}"
        if self.unexpected_count is not None:
            text += f": {self.unexpected_count} rows unexpected"
            if self.examples:
                text += f", e.g. {self.examples[:MAX_EXAMPLES]}"
            if self.example_ids:
                text += f" (ids {self.example_ids[:MAX_EXAMPLES]})"
        elif self.observed is not None:
            text += f": observed {self.observed}"
        return text


@dataclass
class GateReport:
    """A gate's verdict. A gate that evaluated no expectation has not passed."""

    gate: str
    outcomes: list[Outcome]
    summary_path: Path
    html_path: Path | None = None

    @property
    def passed(self) -> bool:
        return bool(self.outcomes) and all(o.success for o in self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success]

    def message(self) -> str:
        """The readable summary GateFailed carries."""
        where = f"\nreport: {self.html_path or self.summary_path}"
        if not self.outcomes:
            return (
                f"gate {self.gate} FAILED: it evaluated zero expectations, so it checked "
                f"nothing (a misconfigured suite must not pass){where}"
            )
        failed, total = len(self.failed), len(self.outcomes)
        lines = [f"gate {self.gate} FAILED: {failed} of {total} expectations"]
        lines += [f"  - {o.line()}" for o in self.failed]
        return "\n".join(lines) + where

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "passed": self.passed,
            "evaluated": len(self.outcomes),
            "failed": len(self.failed),
            "html": str(self.html_path) if self.html_path else None,
            "expectations": [jsonable(asdict(o)) for o in self.outcomes],
        }

    def write_summary(self) -> None:
        self.summary_path.parent.mkdir(parents=True, exist_ok=True)
        self.summary_path.write_text(json.dumps(self.to_dict(), indent=2))


def render_html(report: GateReport, title: str, notes: list[str] | None = None) -> str:
    """A self-contained HTML page of a gate's outcomes (for gates that do not run GX)."""
    status = "PASSED" if report.passed else "FAILED"
    colour = "#1a7f37" if report.passed else "#cf222e"
    rows = []
    for o in report.outcomes:
        mark = "&#10004;" if o.success else "&#10008;"
        detail = o.line()
        rows.append(
            f"<tr><td>{mark}</td><td>{html.escape(o.name)}</td>"
            f"<td>{html.escape(str(o.column or ''))}</td>"
            f"<td>{html.escape(json.dumps(jsonable(o.observed)))}</td>"
            f"<td>{html.escape(detail)}</td></tr>"
        )
    note_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes or [])
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;"
        "padding:4px 8px}table{border-collapse:collapse}</style></head><body>"
        f"<h1>{html.escape(title)}: <span style='color:{colour}'>{status}</span></h1>"
        f"{note_html}<table><tr><th></th><th>check</th><th>metric</th><th>observed</th>"
        f"<th>detail</th></tr>{''.join(rows)}</table></body></html>"
    )
