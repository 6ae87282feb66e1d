"""distill: a small student CLIP trained from the reinforced dataset (TinyCLIP + MobileCLIP).

Reads `distill.*` (plus `device`). The student (`distill.student`, a repo config) is
initialised from the teacher by TinyCLIP's manual weight inheritance when `distill.inherit`,
then trained with the shared trainer on the reinforced dataset only: each epoch every image
contributes one of its stored views, re-created exactly from its parameters, and the loss is
affinity mimicking against the teacher's STORED embeddings of that view and caption (the
teacher is loaded for inheritance and its parameter count, never run). The teacher logit
scale is `distill.teacher_logit_scale` (100 as MobileCLIP) or, when null, the teacher's own
learned scale recorded by the reinforce stage.

Inputs: `layout.reinforced_db`, `layout.model_dir("teacher")`.
Outputs: `layout.model_dir("student")` (card: parent teacher + sha256, vision parameter
counts of both, inheritance report), `layout.train_log("distill")`.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from pydantic import BaseModel

from tasks.device import pick_device
from tasks.distillation.affinity_loss import AffinityMimickingLoss
from tasks.distillation.inherit import InheritReport, inherit_weights
from tasks.distillation.reinforced_data import ReinforcedTensors
from tasks.distillation.reinforced_table import ReinforcedDataError, read_reinforced
from tasks.errors import StageError
from tasks.layout import Layout
from tasks.models.factory import LoadedModel, ModelLoadError, create_model, vision_parameters
from tasks.models.io import load_model, save_model, sha256_file
from tasks.models.zoo import UnknownModelError
from tasks.params import DistillParams, PipelineParams
from tasks.stage_cli import stage_main
from tasks.training.data import Batch, encode_batch_text
from tasks.training.objective import Features, LossOutput
from tasks.training.trainer import train


class DistillSummary(BaseModel):
    """What the distill stage trained and wrote."""

    student: str
    train_images: int
    views_per_image: int
    steps: int
    final_loss: float
    wall_s: float
    vision_params: int
    teacher_vision_params: int
    vision_param_ratio: float
    inherited: dict[str, Any] | None
    teacher_logit_scale: float
    weights_sha256: str


class AffinityObjective:
    """The trainer's objective: student features of the batch vs the stored teacher embeddings."""

    def __init__(self, loss: AffinityMimickingLoss) -> None:
        self.affinity = loss

    def features(self, model: torch.nn.Module, batch: Batch) -> Features:
        return {
            "image": model.encode_image(batch["image"], normalize=True),
            "text": encode_batch_text(model, batch),
            "teacher_image": batch["teacher_image"],
            "teacher_text": batch["teacher_text"],
        }

    def loss(self, model: torch.nn.Module, features: Features) -> LossOutput:
        parts = self.affinity(
            features["image"],
            features["text"],
            model.logit_scale.exp(),
            features["teacher_image"],
            features["teacher_text"],
        )
        return parts.total, {"soft_loss": parts.soft.item(), "hard_loss": parts.hard.item()}


def _load_teacher(layout: Layout) -> LoadedModel:
    try:
        return load_model(layout.model_dir("teacher"), device="cpu")
    except ModelLoadError as exc:
        raise StageError(f"cannot load the teacher: {exc}") from None


def _check_lineage(teacher: LoadedModel, manifest: dict[str, Any], layout: Layout) -> str:
    """The teacher's weights sha256, which must be the one the reinforced dataset names."""
    sha = teacher.card.get("weights_sha256") or sha256_file(
        layout.model_dir("teacher") / "model.safetensors"
    )
    if manifest["teacher_weights_sha256"] != sha:
        raise StageError(
            f"{layout.reinforced_db} was built from teacher weights "
            f"{manifest['teacher_weights_sha256'][:12]}, but models/teacher holds {sha[:12]}: "
            "re-run the reinforce stage"
        )
    return sha


def _build_student(cfg: DistillParams, teacher: LoadedModel) -> tuple[LoadedModel, InheritReport]:
    """The student config, inherited from the teacher when asked, with its size checked."""
    torch.manual_seed(cfg.seed)  # the parts left at init are part of the run's seed
    try:
        student = create_model(cfg.student, device="cpu", lock_text=cfg.lock_text)
    except (UnknownModelError, ModelLoadError) as exc:
        raise StageError(f"distill.student: {exc}") from None
    report = inherit_weights(teacher.model, student.model) if cfg.inherit else InheritReport()
    s_params, t_params = vision_parameters(student.model), vision_parameters(teacher.model)
    if s_params > cfg.max_vision_fraction * t_params:
        raise StageError(
            f"distill.student {cfg.student!r} has {s_params:,} vision parameters, "
            f"{s_params / t_params:.0%} of the teacher's {t_params:,}; the limit is "
            f"distill.max_vision_fraction = {cfg.max_vision_fraction}: pick a smaller student"
        )
    return student, report


def run(params: PipelineParams, layout: Layout) -> DistillSummary:
    """Distil the teacher into `distill.student`; write `layout.model_dir("student")`."""
    started = time.perf_counter()
    cfg = params.distill
    device = pick_device(params.device)
    try:
        data = read_reinforced(layout.reinforced_db)
    except ReinforcedDataError as exc:
        raise StageError(f"{exc}") from None
    teacher = _load_teacher(layout)
    teacher_sha = _check_lineage(teacher, data.manifest, layout)
    student, report = _build_student(cfg, teacher)

    scale = cfg.teacher_logit_scale or float(data.manifest["teacher_logit_scale"])
    loss = AffinityMimickingLoss(alpha=cfg.alpha, weight=cfg.weight, teacher_logit_scale=scale)
    tensors = ReinforcedTensors.build(data, student)
    result = train(
        student.model,
        tensors,
        AffinityObjective(loss),
        cfg,
        device,
        log_path=layout.train_log("distill"),
        desc="distill",
    )

    s_params, t_params = vision_parameters(student.model), vision_parameters(teacher.model)
    card = save_model(
        student.model,
        student.name,
        student.model_cfg,
        layout.model_dir("student"),
        {
            "stage": "student",
            "parent": {"stage": "teacher", "weights_sha256": teacher_sha},
            "params": cfg.model_dump(mode="json"),
            "metrics": {
                "train_rows": len(data),
                "final_loss": result.final_loss,
                "last_epoch_loss": result.last_epoch_loss,
                "steps": result.steps,
                "wall_s": result.wall_s,
                "samples_per_s": result.samples_per_s,
                "vision_params": s_params,
                "teacher_vision_params": t_params,
                "vision_param_ratio": round(s_params / t_params, 4),
            },
            "teacher_model_name": teacher.name,
            "teacher_logit_scale": scale,
            "inheritance": report.to_dict() if cfg.inherit else None,
            "reinforced": {
                "num_images": len(data),
                "num_augmentations": int(data.manifest["num_augmentations"]),
            },
        },
    )
    return DistillSummary(
        student=student.name,
        train_images=len(data),
        views_per_image=int(data.manifest["num_augmentations"]),
        steps=result.steps,
        final_loss=round(result.final_loss, 5),
        wall_s=round(time.perf_counter() - started, 2),
        vision_params=s_params,
        teacher_vision_params=t_params,
        vision_param_ratio=round(s_params / t_params, 4),
        inherited={k: v for k, v in report.to_dict().items() if k != "initialised_keys"}
        if cfg.inherit
        else None,
        teacher_logit_scale=scale,
        weights_sha256=card["weights_sha256"],
    )


def main(argv: list[str] | None = None) -> int:
    return stage_main("distill", run, argv)


if __name__ == "__main__":
    sys.exit(main())
