"""The three-line CLI every stage module shares: `python -m tasks.<stage> [--params] [--root]`.

Training stages also run under `torchrun --nproc_per_node N -m tasks.<stage>`: every rank
runs the stage, rank 0 alone writes files and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from tasks.errors import StageError
from tasks.layout import Layout
from tasks.params import ParamsError, PipelineParams, load_params


def stage_main(
    name: str, run: Callable[[PipelineParams, Layout], Any], argv: list[str] | None = None
) -> int:
    """Load params.yaml, run the stage under the project root, print its summary as JSON."""
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{name}", description=f"clipops {name}")
    parser.add_argument("--params", default="params.yaml", help="parameters file")
    parser.add_argument("--root", default=".", help="project root the layout is relative to")
    args = parser.parse_args(argv)
    rank = _torchrun_rank()
    try:
        params = load_params(args.params)
        summary = run(params, Layout.at(args.root))
    except (ParamsError, StageError) as exc:
        where = f" (rank {rank})" if rank is not None else ""
        print(f"clipops {name}{where}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ParamsError) else 1
    finally:
        if rank is not None:
            from tasks.training import distributed

            distributed.teardown()
    if summary is not None and not rank:  # rank 0 (or a plain process) reports the stage
        dump = summary.model_dump(mode="json") if hasattr(summary, "model_dump") else summary
        print(json.dumps(dump, indent=2, default=str))
    return 0


def _torchrun_rank() -> int | None:
    """This process's rank when started by torchrun with several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return int(os.environ.get("RANK", "0"))
