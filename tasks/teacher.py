"""teacher stage: contrastive training of the teacher CLIP on the curated train rows.

Reads `params.teacher` (+ `seed`, `device`), `data/curate/curated.parquet`; writes
`models/teacher/` (tasks.models.io format) and `plots/teacher_loss.csv`.

The default is a small ViT with the pretrained MiniLM text tower locked (LLM2CLIP's idea:
a frozen, good text encoder gives the image tower a fixed target; from-scratch text sat
at chance for epochs here). `teacher.model` may be any repo or open_clip config name or a
path to an open_clip JSON config; `teacher.pretrained` a local checkpoint to start from.
`epochs: 0` is not allowed, so a pretrained checkpoint is always adapted to the data at
least one epoch.

LiT (`teacher.lock_image`): the image tower is frozen and only the text side (and the
temperature) learn. It needs pretrained image weights, from `teacher.pretrained` (a whole
checkpoint) or `teacher.pretrained_image` (only the `visual.*` tensors of any checkpoint
whose image tower has this config's shape); params validation refuses lock_image without
either, and locking both towers (nothing would train).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from tasks.device import pick_device
from tasks.distillation.configs import build_from_config, model_config
from tasks.errors import StageError
from tasks.layout import Layout
from tasks.models.factory import WEIGHTS_FILE, ModelLoadError
from tasks.models.io import sha256_file
from tasks.models.zoo import UnknownModelError
from tasks.params import PipelineParams
from tasks.stage_cli import stage_main
from tasks.training.data import PairTensors
from tasks.training.objective import ClipObjective
from tasks.training.stage_common import augment_from, read_train_rows, save_trained
from tasks.training.trainer import train


def run(params: PipelineParams, layout: Layout) -> dict[str, Any]:
    """Train the teacher and save it to `layout.model_dir("teacher")`; return its card."""
    p = params.teacher
    device = pick_device(params.device)
    rows = read_train_rows(layout)

    torch.manual_seed(p.seed)  # the model's random init is part of the run's seed
    try:
        name, cfg = model_config(p.model)
        loaded = build_from_config(
            name,
            cfg,
            pretrained=p.pretrained,
            pretrained_image=p.pretrained_image,
            lock_text=p.lock_text,
            lock_image=p.lock_image,
        )
    except (UnknownModelError, ModelLoadError) as exc:
        raise StageError(f"teacher.model / teacher.pretrained(_image): {exc}") from None

    data = PairTensors.from_frame(rows, loaded, augment_from(p))
    result = train(
        loaded.model, data, ClipObjective(), p, device, layout.train_log("teacher"), desc="teacher"
    )
    parent = None
    if p.pretrained is not None:
        path = loaded_checkpoint_path(p.pretrained)
        parent = {"stage": "pretrained", "path": str(path), "weights_sha256": sha256_file(path)}
    if p.pretrained_image is not None:
        path = loaded_checkpoint_path(p.pretrained_image)
        image_parent = {"path": str(path), "weights_sha256": sha256_file(path)}
        parent = {**(parent or {"stage": "pretrained"}), "image_tower": image_parent}
    return save_trained(
        loaded,
        layout.model_dir("teacher"),
        "teacher",
        parent,
        p,
        result,
        len(rows),
        {"unique_captions": data.num_unique_captions},
    )


def loaded_checkpoint_path(pretrained: str) -> Path:
    """The checkpoint file a `pretrained` value names (a file, or a model folder's weights)."""
    path = Path(pretrained)
    return path / WEIGHTS_FILE if path.is_dir() else path


def main(argv: list[str] | None = None) -> int:
    return stage_main("teacher", run, argv)


if __name__ == "__main__":
    sys.exit(main())
