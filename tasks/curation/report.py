"""The curation report (with its accounting identity) and the head/tail entry-count plot."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.errors import StageError


class AccountingError(StageError):
    """rows_in != kept + filtered + quarantined: some row was lost or counted twice."""


def top_entries(entries: list[str], counts: np.ndarray, k: int = 20) -> list[dict[str, Any]]:
    """The k entries with the highest counts, as [{entry, count}] (ties broken by entry id)."""
    order = np.argsort(-counts, kind="stable")[:k]
    return [{"entry": entries[i], "count": int(counts[i])} for i in order if counts[i] > 0]


def build_pool_report(
    *,
    rows_read: int,
    quarantine: pd.DataFrame,
    kept_split: np.ndarray,
    removed: pd.DataFrame,
    entries: list[str],
    balance: dict[str, Any],
    steps: dict[str, str],
    examples: dict[str, list[dict[str, Any]]],
    params: Any,
    metadata_info: dict[str, Any],
    model_summary: dict[str, Any],
    inputs: list[str],
    timings: dict[str, float],
) -> dict[str, Any]:
    """Assemble the curation report and check rows_in == kept + filtered + quarantined.

    `rows_read` counts the pool rows curation saw; `quarantine` holds every row quarantined
    on the way (hostile shard members, and ingest's rows for the pipeline's pair table).
    """
    counts_before, counts_after = balance["counts_before"], balance["counts_after"]
    filtered = dict(sorted(Counter(removed["reason"]).items()))
    quarantined = dict(sorted(Counter(quarantine["reason"]).items())) if len(quarantine) else {}
    kept = Counter(str(s) for s in kept_split)
    report = {
        "rows_in": rows_read + len(quarantine),
        "kept": {"train": kept.get("train", 0), "eval": kept.get("eval", 0)},
        "filtered": filtered,
        "quarantined": quarantined,
        "steps": steps,
        "entries": len(entries),
        "metadata": metadata_info,
        "entries_matched_before": int((counts_before > 0).sum()),
        "entries_matched_after": int((counts_after > 0).sum()),
        "matches_before": int(counts_before.sum()),
        "matches_after": int(counts_after.sum()),
        "pairs_balanced": balance["pairs_balanced"],
        "t": balance["t"],
        "t_source": balance["t_source"],
        "tail_share_at_t": balance["tail_share_at_t"],
        "lowercase": params.lowercase,
        "seed": params.seed,
        "top_entries_before": top_entries(entries, counts_before),
        "top_entries_after": top_entries(entries, counts_after),
        "duplicate_examples": examples,
        "score_model": model_summary or None,
        "inputs": inputs,
        "timings_s": timings,
    }
    check_identity(report)
    return report


def check_identity(report: dict[str, Any]) -> None:
    """Raise AccountingError unless rows_in == kept + filtered + quarantined."""
    kept = sum(report["kept"].values())
    filtered = sum(report["filtered"].values())
    quarantined = sum(report["quarantined"].values())
    if report["rows_in"] != kept + filtered + quarantined:
        raise AccountingError(
            f"curation accounting broken: rows_in={report['rows_in']} but kept={kept} + "
            f"filtered={filtered} + quarantined={quarantined} = {kept + filtered + quarantined}"
        )


def write_report(report: dict[str, Any], path: str | Path) -> None:
    """Check the identity again (the report may have been edited) and write JSON atomically."""
    check_identity(report)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    tmp.replace(path)


def write_entry_count_plot(
    counts_before: np.ndarray, counts_after: np.ndarray, t: int, csv_path: Path, png_path: Path
) -> None:
    """MetaCLIP's head/tail picture: matched entries ranked by count, before vs after.

    The CSV (rank, count_before, count_after) is what `dvc plots` reads; the PNG is for people.
    """
    order = np.argsort(-counts_before, kind="stable")
    order = order[counts_before[order] > 0]
    table = pd.DataFrame(
        {
            "rank": np.arange(1, len(order) + 1),
            "count_before": counts_before[order],
            "count_after": counts_after[order],
        }
    )
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(csv_path, index=False)

    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if len(table):
        ax.loglog(table["rank"], table["count_before"], label="before balancing")
        # an entry can lose every pair; log axes cannot show zero, so clip to the axis floor
        ax.loglog(table["rank"], table["count_after"].clip(lower=0.8), label="after balancing")
    ax.axhline(t, color="grey", linestyle="--", label=f"t = {t}")
    ax.set_xlabel("entry rank (by count before balancing)")
    ax.set_ylabel("matched pairs")
    ax.set_title("MetaCLIP entry counts before / after balancing")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def reason_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per outcome: kept (per split), each filter reason, each quarantine reason."""
    rows = [{"outcome": "kept", "reason": split, "rows": n} for split, n in report["kept"].items()]
    rows += [{"outcome": "filtered", "reason": r, "rows": n} for r, n in report["filtered"].items()]
    rows += [
        {"outcome": "quarantined", "reason": r, "rows": n} for r, n in report["quarantined"].items()
    ]
    return rows


def write_reason_plot(report: dict[str, Any], csv_path: Path) -> None:
    """reason,rows CSV of every filter and quarantine reason (a DVC bar plot)."""
    table = pd.DataFrame([r for r in reason_rows(report) if r["outcome"] != "kept"])
    if table.empty:
        table = pd.DataFrame({"outcome": [], "reason": [], "rows": []})
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    table[["reason", "rows", "outcome"]].to_csv(csv_path, index=False)


def curation_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown for people (the Prefect UI artifact)."""
    kept, filtered = sum(report["kept"].values()), sum(report["filtered"].values())
    quarantined = sum(report["quarantined"].values())
    lines = [
        "## Curation",
        "",
        f"**{report['rows_in']:,}** rows in = **{kept:,}** kept ({report['kept']['train']:,} "
        f"train, {report['kept']['eval']:,} eval) + **{filtered:,}** filtered + "
        f"**{quarantined:,}** quarantined.",
        "",
        f"MetaCLIP: {report['entries']:,} entries, t = {report['t']:,} ({report['t_source']}; "
        f"{report['tail_share_at_t']:.1%} of matches kept), "
        f"{report['entries_matched_before']:,} entries matched before balancing, "
        f"{report['entries_matched_after']:,} after.",
        "",
        "| outcome | reason | rows |",
        "|---|---|---:|",
        *[f"| {r['outcome']} | {r['reason']} | {r['rows']:,} |" for r in reason_rows(report)],
        "",
        "| step | status |",
        "|---|---|",
        *[f"| {step} | {status} |" for step, status in report["steps"].items()],
        "",
        "Top entries after balancing: "
        + ", ".join(f"{e['entry']!r} ({e['count']:,})" for e in report["top_entries_after"][:10]),
    ]
    for reason, examples in report.get("duplicate_examples", {}).items():
        shown = "; ".join(
            " vs ".join(str(v) for k, v in ex.items() if k != "distance") for ex in examples[:3]
        )
        lines.append(f"\nExamples of `{reason}` (removed vs kept): {shown}")
    return "\n".join(lines) + "\n"
