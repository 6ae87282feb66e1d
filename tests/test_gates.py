"""The data gates (gate_raw via Great Expectations, the runner) and the eval gate's check."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import gate_raw
from tasks.errors import GateFailed
from tasks.gate_eval import evaluate_gate
from tasks.gates.eval_checks import check_eval, metric_direction
from tasks.gates.runner import Batch, run_gate
from tasks.layout import Layout
from tasks.pair_table import PAIR_SCHEMA, write_pairs, write_quarantine
from tasks.params import parse_params
from tests.test_curate import pair, png

PARAMS = parse_params({"gate": {"min_rows": 10, "max_quarantine_fraction": 0.2}})


def raw_rows(n: int = 12) -> list[dict]:
    return [
        pair(f"r{i:03d}", png(i), f"a drawing of shape {i}", "shape", "train" if i % 4 else "eval")
        for i in range(n)
    ]


def write_quarantine_rows(layout: Layout, n: int) -> None:
    frame = pd.DataFrame(
        {
            "row": [f"user:{i}.png" for i in range(n)],
            "source": ["user"] * n,
            "reason": ["image_undecodable"] * n,
            "detail": ["truncated"] * n,
        }
    )
    write_quarantine(frame, layout.quarantine)


def test_gate_raw_passes_on_good_data_and_writes_reports(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path)
    write_pairs(pd.DataFrame(raw_rows()), layout.pairs)
    write_quarantine_rows(layout, 1)
    summary = gate_raw.run(PARAMS, layout)
    assert summary["passed"] and summary["failed"] == 0 and summary["expectations"] >= 15
    html = layout.gate_dir("raw") / "docs" / "index.html"
    assert html.exists() and "<html" in html.read_text().lower()
    on_disk = json.loads((layout.gate_dir("raw") / "summary.json").read_text())
    assert on_disk["passed"] is True
    names = {e["name"] for e in on_disk["expectations"]}
    assert "expect_column_values_to_be_unique" in names


def test_gate_raw_fails_on_duplicate_ids_null_captions_and_quarantine(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path)
    rows = raw_rows()
    rows[3]["id"] = rows[2]["id"]  # duplicate id
    rows[5]["caption"] = None  # null caption
    rows[6]["sha256"] = "not-a-hash"
    rows[7]["source"] = "scraped"
    # the canonical writer refuses nulls in `caption`, so write a deliberately loose schema
    loose = pa.schema([f.with_nullable(True) for f in PAIR_SCHEMA])
    layout.pairs.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=loose), layout.pairs)
    write_quarantine_rows(layout, 6)  # 6 / 18 = 0.33 > 0.2
    with pytest.raises(GateFailed) as failure:
        gate_raw.run(PARAMS, layout)
    message = str(failure.value)
    assert "expect_column_values_to_be_unique(id)" in message and "r002" in message
    assert "expect_column_values_to_not_be_null(caption)" in message and "r005" in message
    assert "not-a-hash" in message and "scraped" in message
    assert "quarantine_fraction" in message
    assert "docs/index.html" in message
    summary = json.loads((layout.gate_dir("raw") / "summary.json").read_text())
    failed = {(e["name"], e["column"]) for e in summary["expectations"] if not e["success"]}
    assert ("expect_column_values_to_be_unique", "id") in failed
    dup = next(e for e in summary["expectations"] if e["name"].endswith("unique"))
    assert dup["unexpected_count"] == 2


def test_a_suite_with_no_expectations_fails(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": [1, 2]})
    with pytest.raises(GateFailed, match="zero expectations"):
        run_gate("empty", lambda: [Batch("frame", frame, [])], tmp_path)


def test_metric_direction() -> None:
    assert metric_direction("zeroshot_acc1") == 1
    assert metric_direction("image_retrieval_recall@5") == 1
    assert metric_direction("backdoor_asr") == -1
    assert metric_direction("vision_params") == 0


METRICS = {"finetuned": {"zeroshot_acc1": 0.8, "text_retrieval_recall@1": 0.5, "vision_params": 9}}


def test_eval_check_thresholds_and_regression() -> None:
    ok = check_eval(METRICS, "finetuned", 0.5, 0.02, None)
    assert all(o.success for o in ok) and len(ok) == 2
    low = check_eval(METRICS, "finetuned", 0.9, 0.02, None)
    assert not low[0].success and low[0].observed == 0.8
    prod = {"zeroshot_acc1": 0.81, "text_retrieval_recall@1": 0.6, "vision_params": 1}
    verdict = check_eval(METRICS, "finetuned", 0.5, 0.02, prod)
    by_metric = {o.column: o for o in verdict if o.name == "no_regression_vs_production"}
    assert by_metric["zeroshot_acc1"].success  # 0.01 drop is within 0.02
    assert not by_metric["text_retrieval_recall@1"].success  # 0.1 drop
    assert "vision_params" not in by_metric
    missing = check_eval(METRICS, "student", 0.5, 0.02, None)
    assert len(missing) == 1 and not missing[0].success


def test_eval_gate_writes_summary_and_html(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path)
    params = parse_params({"gate_eval": {"model": "finetuned", "min_zeroshot_acc1": 0.5}})
    report = evaluate_gate(METRICS, params, {"zeroshot_acc1": 0.9}, layout)
    assert not report.passed and "zeroshot_acc1" in report.message()
    summary = json.loads((layout.gate_dir("eval") / "summary.json").read_text())
    assert summary["passed"] is False and summary["failed"] == 1
    assert "FAILED" in (layout.gate_dir("eval") / "index.html").read_text()


def test_gate_curated_fails_on_broken_shards_matches_and_report(tmp_path: Path) -> None:
    """Tamper with each curate output the gate cross-checks; every tampering is named."""
    import pyarrow as pa

    from tasks import curate, gate_curated
    from tests.test_curate import PARAMS as CURATE_PARAMS
    from tests.test_curate import build_pool

    layout = build_pool(tmp_path)
    curate.run(CURATE_PARAMS, layout)
    assert gate_curated.run(CURATE_PARAMS, layout)["passed"]

    # a kept train row copied into a new shard: duplicate id and image, shard rows != kept ids
    shards = curate.shards_dir(layout)
    part = pq.read_table(sorted(shards.glob("part-*.parquet"))[0]).to_pandas()
    copy = part[part["split"] == "train"].head(1)
    pq.write_table(pa.Table.from_pandas(copy, preserve_index=False), shards / "part-09999.parquet")
    # curate's recorded matches for one kept pair no longer agree with its caption
    balance = pq.read_table(curate.balance_path(layout)).to_pandas()
    victim = balance.index[balance["kept"]][0]
    balance.at[victim, "entries"] = [2]
    pq.write_table(pa.Table.from_pandas(balance, preserve_index=False), curate.balance_path(layout))
    # a report whose numbers do not add up
    report = json.loads(layout.curation_report.read_text())
    report["rows_in"] += 7
    layout.curation_report.write_text(json.dumps(report))

    with pytest.raises(GateFailed) as failure:
        gate_curated.run(CURATE_PARAMS, layout)
    message = str(failure.value)
    assert "shards_gap" in message and "identity_gap" in message
    assert "expect_column_values_to_be_unique(sha256)" in message
    assert "agree" in message and str(balance.at[victim, "id"]) in message
    summary = json.loads((layout.gate_dir("curated") / "summary.json").read_text())
    failed = {(e["asset"], e["column"]) for e in summary["expectations"] if not e["success"]}
    assert ("shards_train", "sha256") in failed and ("shards_train", "id") in failed
    assert ("entry_matches", "agree") in failed
