"""Two torchrun processes (gloo, CPU) end with the weights of one process on the same batch.

The workers run `tests.tiny_training` under `torchrun --standalone --nproc_per_node 2`, with
gradient accumulation on top (2 ranks x 2 micro-batches of 8 = the global batch of 32),
augmentation on, for two kinds of batch source: per-row augmentation keys (each rank builds
its rows) and batch-order draws (each rank builds the global batch and keeps its slice).
The reference is one process with accum_steps=1 in this test process.

Tolerance: the per-sample features, the global loss and the gradient are the same
quantities summed in a different order (two ranks, two micro-batches, gloo's sum), so the
weights differ by float32 rounding amplified through a few AdamW steps: observed max |diff|
3.6e-6 (per-row source) and 5.5e-6 (batch-order source) on weights of magnitude ~0.1-1;
atol 5e-5 leaves a 10x margin. AdamW is blind to a gradient scaled by a constant (counting
`logit_scale`'s direct gradient once per rank still passed the weight check at 1.3e-5), so
the last step's gradients are compared too: observed relative difference <= 1.1e-5, bound
1e-3, and that mistake gives ~1.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tiny_training import last_grads, run_variant, worker_params

REPO_ROOT = Path(__file__).resolve().parent.parent
torch.set_num_threads(2)


def torchrun(out: Path, *args: str, nproc: int = 2, timeout: int = 240) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "tests.tiny_training",
        "--out",
        str(out),
        *args,
    ]
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_gloo_processes_match_one_process(tmp_path):
    torchrun(tmp_path, "--variants", "rowwise,sequential", "--accum", "2", "--batch", "32")
    for variant in ("rowwise", "sequential"):
        two = torch.load(tmp_path / variant / "weights.pt", weights_only=True)
        model = run_variant(variant, worker_params(32, 2, accum=1), tmp_path / f"one-{variant}", 64)
        one = model.state_dict()
        diff = max((two[k] - one[k]).abs().max().item() for k in one)
        print(f"{variant}: max |w(2 procs x accum 2) - w(1 proc)| = {diff:.2e}")
        for key in one:
            torch.testing.assert_close(two[key], one[key], atol=5e-5, rtol=0, msg=key)
        # AdamW hides a gradient off by a constant factor: compare the last step's gradients
        grads_two = torch.load(tmp_path / variant / "grads.pt", weights_only=True)
        grads_one = last_grads(model)
        assert grads_two.keys() == grads_one.keys()
        rel = max(
            ((grads_two[k] - g).norm() / g.norm().clamp_min(1e-12)).item()
            for k, g in grads_one.items()
        )
        print(f"{variant}: max relative gradient difference {rel:.2e}")
        assert rel < 1e-3  # observed ~1e-5; counting logit_scale's gradient twice gives ~1
        # the logged loss is the global-batch loss: the same curve as one process
        rows2 = list(csv.DictReader((tmp_path / variant / "loss.csv").open()))
        rows1 = list(csv.DictReader((tmp_path / f"one-{variant}" / "loss.csv").open()))
        assert [r["step"] for r in rows2] == [r["step"] for r in rows1] == ["0", "1", "2", "3"]
        for a, b in zip(rows2, rows1, strict=True):
            assert float(a["loss"]) == pytest.approx(float(b["loss"]), abs=1e-4)
    # only rank 0 wrote: one weights file and one CSV per variant, no stray checkpoint
    assert sorted(p.name for p in (tmp_path / "rowwise").iterdir()) == [
        "grads.pt",
        "loss.csv",
        "loss.png",
        "result.json",
        "weights.pt",
    ]


@pytest.mark.slow
def test_teacher_stage_cli_runs_under_torchrun(tmp_path):
    """`torchrun --nproc_per_node 2 -m tasks.teacher`: one summary, one model, = 1 process."""
    import json

    import pandas as pd
    import yaml

    from tasks import teacher
    from tasks.layout import Layout
    from tasks.models import load_model, sha256_file
    from tasks.pair_table import write_pairs
    from tasks.params import parse_params
    from tests.test_trainer import tiny_digits

    table = pd.concat([tiny_digits(64, "train"), tiny_digits(8, "eval", seed=1)])
    spec = {"epochs": 1, "batch_size": 32, "warmup_steps": 1, "model": "clipops-vit-xs-minilm"}
    params = parse_params({"device": "cpu", "teacher": {**spec, "crop_scale_min": 0.8}})
    two, one = Layout.at(tmp_path / "two"), Layout.at(tmp_path / "one")
    for layout in (two, one):
        write_pairs(table, layout.curated)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "tasks.teacher", "--params", str(params_file), "--root", str(two.root)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # exactly one JSON document: rank 0's
    out = two.model_dir("teacher")
    assert summary["weights_sha256"] == sha256_file(out / "model.safetensors")
    assert summary["metrics"]["steps"] == 2

    teacher.run(params, one)
    a = load_model(out).model.state_dict()
    b = load_model(one.model_dir("teacher")).model.state_dict()
    diff = max((a[k] - b[k]).abs().max().item() for k in b)
    print(f"teacher stage: max |w(torchrun x2) - w(1 proc)| = {diff:.2e}")
    for key in b:
        torch.testing.assert_close(a[key], b[key], atol=5e-5, rtol=0, msg=key)
    assert two.train_log("teacher").read_text() != ""


def test_only_rank_0_prints_the_summary_and_writes_the_model(monkeypatch, capsys, tmp_path):
    """What rank 1 of a torchrun stage does: runs the stage, writes and prints nothing."""
    from tasks.models.io import read_card, save_model
    from tasks.stage_cli import stage_main
    from tests.tiny_training import tiny_clip

    params_file = tmp_path / "params.yaml"
    params_file.write_text("seed: 0\n")
    ran = []
    summary = {"stage": "demo"}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert (
        stage_main(
            "demo", lambda p, layout: ran.append(1) or summary, ["--params", str(params_file)]
        )
        == 0
    )
    assert ran == [1] and capsys.readouterr().out == ""
    model_dir = tmp_path / "model"
    card = save_model(tiny_clip(0), "tiny", {}, model_dir, {"stage": "demo"})
    assert card == {} and not model_dir.exists()  # rank 0 writes; rank 1 returns its card

    monkeypatch.setenv("RANK", "0")
    assert stage_main("demo", lambda p, layout: summary, ["--params", str(params_file)]) == 0
    assert '"stage": "demo"' in capsys.readouterr().out
    card = save_model(tiny_clip(0), "tiny", {}, model_dir, {"stage": "demo"})
    assert card["stage"] == "demo" and read_card(model_dir) == card
    monkeypatch.setenv("RANK", "1")
    assert save_model(tiny_clip(0), "tiny", {}, model_dir, {"stage": "demo"}) == card
