"""`dvc repro` on a scratch copy of the project: full run, no-op rerun, targeted rerun.

Runs the real DVC CLI in a fresh git + DVC repository holding this project's code, dvc.yaml
and tiny parameters. Marked slow: every stage is a separate Python process.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.pipeline import STAGES
from tasks.params import parse_params
from tests.conftest import REPO_ROOT, TINY_PARAMS

pytestmark = pytest.mark.slow
ALL_STAGES = set(STAGES)


def _run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([a-z_]+)'", output))


@pytest.fixture
def dvc_project(tmp_path: Path) -> Path:
    root = tmp_path / "clipops"
    root.mkdir()
    for name in ("tasks", "storage"):
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")
    # DVC wants every key a stage names under `params:`, so write the full validated set
    full = parse_params(TINY_PARAMS).model_dump(mode="json")
    (root / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    (root / ".gitignore").write_text("store/\n")
    _run(["git", "init", "-q"], root)
    _run(["git", "config", "user.email", "ci@clipops.invalid"], root)
    _run(["git", "config", "user.name", "clipops ci"], root)
    _run(["dvc", "init", "-q"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-qm", "scratch project"], root)
    return root


def test_repro_then_noop_then_only_downstream_of_curate(dvc_project: Path) -> None:
    first = _run(["dvc", "repro"], dvc_project)
    assert _ran(first) == ALL_STAGES

    second = _run(["dvc", "repro"], dvc_project)
    assert _ran(second) == set(), second

    params = yaml.safe_load((dvc_project / "params.yaml").read_text())
    params["curate"]["balance_t"] = params["curate"]["balance_t"] - 100
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params))
    third = _run(["dvc", "repro"], dvc_project)
    ran = _ran(third)
    assert "curate" in ran
    assert not ran & {"ingest", "gate_raw"}, ran
    assert ran <= ALL_STAGES - {"ingest", "gate_raw"}
