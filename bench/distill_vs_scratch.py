"""Benchmark: the distilled student vs the same architecture trained from scratch, same steps.

TinyCLIP reports its students against from-scratch training of the same architecture; this
runs both on the bundled data in one process, side by side: the distill stage (inheritance +
the configured loss, progressive stages if asked) and the scratch student (fresh init, plain
CLIP loss on the real captions of the same stored views, the same total steps and batch
size), then zero-shot digits acc1 of teacher, student and scratch student (eval templates
only). Reported as acc1 values and the ratios student/teacher and student/scratch, with the
wall time of each.

Needs a project where `dvc repro reinforce` has run (data/curate, data/reinforced,
models/teacher). The run happens in a temporary copy, so the pipeline's outputs are untouched.

    .venv/bin/python -m bench.distill_vs_scratch [--root .] [--params params.yaml]
        [--loss tinyclip|mobileclip] [--progressive 0.75 0.5] [--epochs N]

Prints a table; writes reports/bench/distill_vs_scratch.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/distill_vs_scratch.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from tasks import distill
from tasks.layout import Layout
from tasks.params import load_params

NAME = "distill_vs_scratch"
NEEDED = ("data/curate", "data/reinforced", "models/teacher")


def run_bench(root: Path, params_path: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Distil and train from scratch in a temp copy of `root`; return the measured figures."""
    missing = [p for p in NEEDED if not (root / p).exists()]
    if missing:
        raise SystemExit(f"{', '.join(missing)} missing under {root}: run `dvc repro reinforce`")
    params = load_params(params_path)
    cfg = params.distill.model_copy(update={"compare_scratch": True, **overrides})
    params = params.model_copy(update={"distill": cfg})
    with tempfile.TemporaryDirectory(prefix="clipops-bench-distill-") as tmp:
        for part in NEEDED:
            shutil.copytree(root / part, Path(tmp) / part)
        started = time.perf_counter()
        summary = distill.run(params, Layout.at(tmp))
        wall = time.perf_counter() - started
    c = summary.comparison
    distill_train_s = sum(s["wall_s"] for s in summary.stages)
    return {
        "loss": cfg.loss,
        "progressive": cfg.progressive,
        "student": summary.student,
        "vision_param_ratio": summary.vision_param_ratio,
        "steps": c["distill_steps"],
        "scratch_steps": c["scratch_steps"],
        "teacher_acc1": c["teacher_zeroshot_acc1"],
        "student_acc1": c["student_zeroshot_acc1"],
        "scratch_acc1": c["scratch_zeroshot_acc1"],
        "student_over_teacher": c["student_teacher_ratio"],
        "student_over_scratch": round(
            c["student_zeroshot_acc1"] / max(c["scratch_zeroshot_acc1"], 1e-9), 3
        ),
        "distill_train_s": round(distill_train_s, 1),
        "scratch_s": c["scratch_wall_s"],
        "total_s": round(wall, 1),
        "stages": summary.stages,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m bench.{NAME}", description=__doc__)
    parser.add_argument("--root", default=".", type=Path)
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--loss", choices=["tinyclip", "mobileclip"])
    parser.add_argument("--progressive", nargs="*", type=float)
    parser.add_argument("--epochs", type=int)
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.loss:
        overrides["loss"] = args.loss
    if args.progressive is not None:
        overrides["progressive"] = args.progressive
    if args.epochs:
        overrides["epochs"] = args.epochs
    result = run_bench(args.root.resolve(), args.params, overrides)
    result["machine"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    rows = [
        ("teacher", result["teacher_acc1"], "-", "-"),
        ("distilled student", result["student_acc1"], result["steps"], result["distill_train_s"]),
        ("scratch student", result["scratch_acc1"], result["scratch_steps"], result["scratch_s"]),
    ]
    print(f"{'model':<20}{'digits acc1':>12}{'steps':>8}{'train s':>10}")
    for name, acc, steps, secs in rows:
        print(f"{name:<20}{acc:>12}{steps!s:>8}{secs!s:>10}")
    print(
        f"student/teacher {result['student_over_teacher']}  "
        f"student/scratch {result['student_over_scratch']}  "
        f"vision params {result['vision_param_ratio']:.1%} of the teacher's"
    )
    out = args.root / "reports" / "bench" / f"{NAME}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
