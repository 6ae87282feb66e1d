"""Shared fixtures: tiny but real parameters and a fresh project root per test."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from tasks.layout import Layout
from tasks.params import PipelineParams, parse_params

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One text-feature cache per test session (also inherited by the DVC subprocess test).
os.environ["CLIPOPS_CACHE_DIR"] = tempfile.mkdtemp(prefix="clipops-test-cache-")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO_ROOT = Path(__file__).resolve().parent.parent

# Small enough for a 2-core CI machine, large enough that every stage does real work:
# all 1,797 digits (zero-shot needs them), a slice of textiles and shapes, short training.
TINY_PARAMS: dict = {
    "ingest": {
        "textiles": {"max_images": 60},
        "shapes": {"num_pairs": 200, "exact_duplicates": 5, "near_duplicates": 5},
    },
    "gate": {"min_rows": 50},
    "curate": {"wordfreq_top_n": 500, "balance_t": 400},
    "teacher": {"epochs": 1, "batch_size": 64, "warmup_steps": 5},
    "reinforce": {"num_augmentations": 2},
    "distill": {"epochs": 1, "batch_size": 64, "warmup_steps": 5},
    "finetune": {"epochs": 1, "batch_size": 64, "warmup_steps": 2},
    "gate_eval": {"min_zeroshot_acc1": 0.0, "max_regression": 1.0},
}


@pytest.fixture
def tiny_params() -> PipelineParams:
    """Real parameters scaled down for tests (validated like params.yaml)."""
    return parse_params(TINY_PARAMS)


@pytest.fixture
def project(tmp_path: Path) -> Layout:
    """An empty project root in a tmp dir."""
    return Layout.at(tmp_path / "project")
