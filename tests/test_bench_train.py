"""Smoke run of bench/train_throughput at a tiny size, so the benchmark cannot rot.

It asserts what the report must contain (both systems, positive rates, ratios, the
distillation comparison), never how fast anything is.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench import train_throughput as bench


def test_bench_reports_both_systems_and_the_distillation_comparison(tmp_path: Path) -> None:
    out = tmp_path / "train_throughput.json"
    code = bench.main(
        [
            "--rows", "24",
            "--batch-size", "8",
            "--epochs", "2",
            "--skip-steps", "1",
            "--data", "shapes",
            "--threads", "1",
            "--repeats", "2",
            "--configs", "clipops-vit-s-text-s:unlocked",
            "--student", "clipops-vit-s-text-s",
            "--distill-epochs", "2",
            "--num-augmentations", "1",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["settings"]["rows"] == 24
    (record,) = report["configs"]
    assert record["config"] == "clipops-vit-s-text-s" and record["text_tower"] == "trained"
    for system in ("ours", "open_clip_train"):
        summary = record[system]
        assert summary["steps"] == 2 * (24 // 8)  # same steps for both: same data, batch, epochs
        assert summary["samples_per_s"] > 0 and summary["samples_per_cpu_s"] > 0
        assert summary["end_to_end_s"] > 0
        assert len(summary["rounds"]) == 2  # one run per round, alternating order
        assert all(r["rates"]["samples_per_s"] > 0 for r in summary["rounds"])
    for key in ("ratio_steady", "ratio_steady_cpu", "ratio_all_steps", "ratio_end_to_end"):
        assert record[key] > 0
    assert len(record["ratio_steady_per_round"]) == 2
    distill = report["distill"]
    assert distill["reinforced_epoch_s"] > 0 and distill["online_teacher_epoch_s"] > 0
    assert len(distill["rounds"]) == 2
    for mode in ("reinforced", "online_teacher"):
        for r in distill["rounds"]:
            assert r[mode]["epoch_s"] > 0 and r[mode]["steps"] == 2 * (24 // 8)
    assert distill["ratio_epoch_time_online_over_reinforced"] > 0
    assert distill["reinforce_stage_s"] > 0
