"""The three-line CLI every stage module shares: `python -m tasks.<stage> [--params] [--root]`."""

from __future__ import annotations

import argparse
import json
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
    try:
        params = load_params(args.params)
        summary = run(params, Layout.at(args.root))
    except (ParamsError, StageError) as exc:
        print(f"clipops {name}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ParamsError) else 1
    if summary is not None:
        dump = summary.model_dump(mode="json") if hasattr(summary, "model_dump") else summary
        print(json.dumps(dump, indent=2, default=str))
    return 0
