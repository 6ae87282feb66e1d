"""Checkpoints: a run killed mid-way and restarted ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tasks.training import ClipObjective, train
from tasks.training.checkpoint import CheckpointMismatchError
from tests.tiny_training import run_variant, tiny_clip, tiny_pairs, worker_params

REPO_ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
torch.set_num_threads(min(2, os.cpu_count() or 1))


class Crash(RuntimeError):
    pass


class CrashingObjective(ClipObjective):
    """Raises after `crash_at` steps, as a kill would stop the run there (the objective's
    type is part of a checkpoint's fingerprint, so the resumed run uses this type too)."""

    def __init__(self, crash_at: int = 10**9) -> None:
        super().__init__()
        self.calls, self.crash_at = 0, crash_at

    def features(self, model, batch):
        self.calls += 1
        if self.calls > self.crash_at:
            raise Crash(f"stopped at call {self.calls}")
        return super().features(model, batch)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict, str]:
    """An uninterrupted run (it writes and removes checkpoints too): weights, loss CSV."""
    # the worker subprocesses use this thread count; bit-exact equality needs the same here,
    # whatever an earlier test in this session set
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    out = tmp_path_factory.mktemp("reference")
    model = run_variant("rowwise", worker_params(16, 3, checkpoint_every=2), out, 64)
    assert not (out / "loss.ckpt").exists()  # removed after a finished run
    return model.state_dict(), (out / "loss.csv").read_text()


def test_resume_after_a_crash_is_bit_identical_and_foreign_checkpoints_are_refused(
    tmp_path, reference
):
    ref_state, ref_csv = reference

    log = tmp_path / "run" / "loss.csv"
    ckpt = log.with_suffix(".ckpt")
    params = worker_params(16, 3, checkpoint_every=2)
    with pytest.raises(Crash):
        train(tiny_clip(7), tiny_pairs(64, augment=True), CrashingObjective(5), params, CPU, log)
    assert ckpt.exists() and not log.exists()
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 4 and len(state["rows"]) == 4

    # a different run must not pick it up: other lr, other data size
    data = tiny_pairs(64, augment=True)
    with pytest.raises(CheckpointMismatchError, match="params.*resume: false"):
        other = params.model_copy(update={"lr": 1e-3})
        train(tiny_clip(7), data, CrashingObjective(), other, CPU, log)
    with pytest.raises(CheckpointMismatchError, match="data_rows"):
        train(tiny_clip(7), tiny_pairs(48, augment=True), CrashingObjective(), params, CPU, log)
    with pytest.raises(CheckpointMismatchError, match="initial_weights"):
        train(tiny_clip(8), data, CrashingObjective(), params, CPU, log)
    with pytest.raises(CheckpointMismatchError, match="objective"):
        train(tiny_clip(7), data, ClipObjective(), params, CPU, log)

    model = tiny_clip(7)
    result = train(model, data, CrashingObjective(), params, CPU, log)
    assert result.resumed_from_step == 4 and result.steps == 12
    for key, value in ref_state.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert log.read_text() == ref_csv
    assert not ckpt.exists()


def test_a_checkpoint_resumes_with_a_different_accum_steps(tmp_path, reference):
    """accum_steps is not fingerprinted: an OOM-killed run resumes with smaller micro-batches."""
    log = tmp_path / "loss.csv"
    params = worker_params(16, 3, checkpoint_every=2)
    data = tiny_pairs(64, augment=True)
    with pytest.raises(Crash):
        train(tiny_clip(7), data, CrashingObjective(5), params, CPU, log)
    model = tiny_clip(7)
    more = params.model_copy(update={"accum_steps": 4})
    result = train(model, data, CrashingObjective(), more, CPU, log)
    assert result.resumed_from_step == 4 and result.accum_steps == 4
    for key, value in reference[0].items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=2e-5, rtol=0, msg=key)


def test_resume_false_starts_over(tmp_path):
    log = tmp_path / "loss.csv"
    params = worker_params(16, 1, checkpoint_every=2)
    with pytest.raises(Crash):
        train(tiny_clip(7), tiny_pairs(64), CrashingObjective(3), params, CPU, log)
    fresh = params.model_copy(update={"resume": False, "lr": 1e-3})  # would be refused
    result = train(tiny_clip(7), tiny_pairs(64), CrashingObjective(), fresh, CPU, log)
    assert result.resumed_from_step == 0 and not log.with_suffix(".ckpt").exists()


def _worker(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "tests.tiny_training", "--out", str(out), "--variants", "rowwise",
        "--batch", "16", "--epochs", "3", "--checkpoint-every", "2", *extra,
    ]  # fmt: skip


def test_sigkill_then_rerun_reaches_the_uninterrupted_weights_and_csv(tmp_path, reference):
    """The real thing: a worker process is SIGKILLed after its first checkpoint."""
    ref_state, ref_csv = reference
    out = tmp_path / "killed"
    ckpt = out / "rowwise" / "loss.ckpt"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    # 0.5 s per step: the run lasts 6 s after its first checkpoint, time enough to see it
    proc = subprocess.Popen(
        _worker(out, "--sleep", "0.5"), cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 180
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "rowwise" / "weights.pt").exists()  # it did not finish

    rerun = subprocess.run(_worker(out), cwd=REPO_ROOT, env=env, capture_output=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr.decode()[-3000:]
    result = json.loads((out / "rowwise" / "result.json").read_text())
    assert 2 <= result["resumed_from_step"] < 12
    state = torch.load(out / "rowwise" / "weights.pt", weights_only=True)
    for key, value in ref_state.items():
        assert torch.equal(state[key], value), key
    assert (out / "rowwise" / "loss.csv").read_text() == ref_csv
    assert not ckpt.exists()
