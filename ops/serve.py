"""Serve the clipops flows to a Prefect server so a person can start runs from the UI.

    prefect server start            # terminal 1 (UI at http://127.0.0.1:4200)
    make serve                      # terminal 2: this script (PREFECT_API_URL set by ops/env.sh)

The deployments' default parameters are the project's params.yaml, shown as a typed form in
the UI; edit any field there before pressing Run. Outputs land under the project root, the
same files `dvc repro` writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import serve

from flows.pipeline import clip_pipeline, clip_stage
from tasks.params import load_params

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--root", default=str(ROOT), help="where stage outputs are written")
    args = parser.parse_args()
    params = load_params(args.params).model_dump(mode="json")
    pipeline = clip_pipeline.to_deployment(
        name="clip-pipeline",
        parameters={"params": params, "root": args.root},
        description="The whole clipops pipeline on the project's data (params.yaml as defaults).",
        tags=["clipops"],
    )
    stage = clip_stage.to_deployment(
        name="clip-stage",
        parameters={"stage": "evaluate", "params": params, "root": args.root},
        description="One clipops stage; its inputs must already exist under root.",
        tags=["clipops"],
    )
    serve(pipeline, stage)


if __name__ == "__main__":
    main()
