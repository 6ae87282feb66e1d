"""distill: small student CLIPs trained from the reinforced dataset (TinyCLIP + MobileCLIP).

Reads `distill.*` (plus `device`, `ingest.digits.eval_templates`). The student is trained
with the shared trainer on the reinforced dataset only: each step every image contributes one
of its stored views, re-created exactly from its parameters, and one real-or-extra caption;
the loss compares the student's logits with the teacher's STORED embeddings of that view and
caption (the teacher is loaded for inheritance and its parameter count, never run):

- `distill.loss: tinyclip`: affinity mimicking, `alpha*w*KD + (1-alpha)*w*CLIP`, teacher
  logit scale `teacher_logit_scale` (null: the teacher's own learned scale);
- `distill.loss: mobileclip`: `w0*CLIP + w1*KD`, teacher logit scale fixed at 100.
With a teacher ensemble the KD target averages the members' softmaxes.

Stages. `distill.progressive: []` trains `distill.student` in one stage. A list such as
`[0.75, 0.5]` is TinyCLIP's multi-stage progressive distillation: each entry is a fraction of
the teacher's vision width (heads, head_width kept) and depth, or a config name/JSON path;
stage i is initialised by manual weight inheritance from stage i-1 (the first from the
teacher), every stage learns from the ORIGINAL teacher's stored embeddings, and the last stage
is the student. Vision parameters must shrink stage by stage, and the student must stay within
`distill.max_vision_fraction` of the teacher's.

Comparison (`distill.compare_scratch`): the student's architecture is also trained from
scratch (no inheritance, plain contrastive on the real captions of the same stored views,
the same total steps and batch size), and the zero-shot digits acc1 of teacher, student and
scratch student (eval templates only) go to `metrics/distill.json`.

Inputs: `layout.reinforced_db`, `layout.model_dir("teacher")`, `layout.curated` (eval rows).
Outputs: `layout.model_dir("student")` (card: parent teacher + sha256, vision parameter
counts, inheritance, every stage), `layout.train_log("distill")` (last stage),
`layout.distill_metrics`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from tasks.device import pick_device
from tasks.distillation.affinity_loss import (
    AffinityMimickingLoss,
    DistillationLoss,
    MobileClipLoss,
)
from tasks.distillation.configs import model_config, scaled_config, scaled_name
from tasks.distillation.inherit import InheritReport, inherit_weights
from tasks.distillation.reinforced_data import ReinforcedTensors
from tasks.distillation.reinforced_table import (
    ReinforcedDataError,
    ReinforcedDataset,
    read_reinforced,
)
from tasks.errors import StageError
from tasks.evaluation.eval_sets import LabelledSet
from tasks.evaluation.model_eval import zeroshot_on
from tasks.layout import Layout
from tasks.models.factory import LoadedModel, ModelLoadError, build_model, vision_parameters
from tasks.models.io import load_model, save_model, sha256_file
from tasks.models.zoo import UnknownModelError
from tasks.pair_table import read_pairs
from tasks.params import DistillParams, PipelineParams
from tasks.stage_cli import stage_main
from tasks.training.data import Batch, encode_batch_text
from tasks.training.objective import ClipObjective, Features, LossOutput
from tasks.training.trainer import TrainResult, train, write_loss_csv

EVAL_BATCH = 256
VISION_KEYS = ("layers", "width", "head_width")


class DistillSummary(BaseModel):
    """What the distill stage trained and wrote."""

    student: str
    loss: str
    train_images: int
    views_per_image: int
    steps: int
    final_loss: float
    wall_s: float
    vision_params: int
    teacher_vision_params: int
    vision_param_ratio: float
    inherited: dict[str, Any] | None
    teacher_logit_scale: float | list[float]
    teachers: int
    stages: list[dict[str, Any]]
    comparison: dict[str, Any]
    weights_sha256: str


class DistillObjective:
    """The trainer's objective: student features of the batch vs the stored teacher embeddings.

    Teacher embeddings pass through `features` unchanged (they are per-sample inputs), so
    gradient accumulation and multi-process gathering concatenate them with the student's.
    """

    def __init__(self, loss: DistillationLoss) -> None:
        self.distill = loss

    def features(self, model: torch.nn.Module, batch: Batch) -> Features:
        return {
            "image": model.encode_image(batch["image"], normalize=True),
            "text": encode_batch_text(model, batch),
            "teacher_image": batch["teacher_image"],
            "teacher_text": batch["teacher_text"],
        }

    def loss(self, model: torch.nn.Module, features: Features) -> LossOutput:
        parts = self.distill(
            features["image"],
            features["text"],
            model.logit_scale.exp(),
            features["teacher_image"],
            features["teacher_text"],
        )
        return parts.total, {"soft_loss": parts.soft.item(), "hard_loss": parts.hard.item()}


AffinityObjective = DistillObjective  # the name earlier code and tests use


@dataclass
class StagePlan:
    """One student to train: its config, and the model built from it (before training)."""

    name: str
    model_cfg: dict[str, Any]
    loaded: LoadedModel
    epochs: int


def build_loss(cfg: DistillParams, data: ReinforcedDataset) -> DistillationLoss:
    """The configured loss, sized to the reinforced dataset's ensemble."""
    dims = data.member_dims
    if cfg.loss == "mobileclip":
        return MobileClipLoss(w0=cfg.w0, w1=cfg.w1, member_dims=dims)
    scale = cfg.teacher_logit_scale or data.member_logit_scales
    return AffinityMimickingLoss(cfg.alpha, cfg.weight, scale, member_dims=dims)


def _load_teacher(layout: Layout) -> LoadedModel:
    try:
        return load_model(layout.model_dir("teacher"), device="cpu")
    except ModelLoadError as exc:
        raise StageError(f"cannot load the teacher: {exc}") from None


def _check_lineage(teacher: LoadedModel, data: ReinforcedDataset, layout: Layout) -> str:
    """The teacher's weights sha256, which must be one the reinforced dataset was built from."""
    sha = teacher.card.get("weights_sha256") or sha256_file(
        layout.model_dir("teacher") / "model.safetensors"
    )
    members = [t["weights_sha256"] for t in data.teachers]
    if sha not in members:
        raise StageError(
            f"{layout.reinforced_db} was built from teacher weights "
            f"{', '.join(m[:12] for m in members)}, but models/teacher holds {sha[:12]} "
            "(the student inherits from it, so it must be one of reinforce.teachers): "
            "re-run the reinforce stage"
        )
    return sha


def _stage_configs(cfg: DistillParams, teacher: LoadedModel) -> list[tuple[str, dict[str, Any]]]:
    """(name, config) of every stage: `student` alone, or the progressive list."""
    steps = cfg.progressive or [cfg.student]
    out = []
    for step in steps:
        try:
            if isinstance(step, float):
                scaled = scaled_config(teacher.model_cfg, step)
                out.append((scaled_name(teacher.name, step), scaled))
            else:
                out.append(model_config(step))
        except (UnknownModelError, ValueError) as exc:
            key = "distill.progressive" if cfg.progressive else "distill.student"
            raise StageError(f"{key} entry {step!r}: {exc}") from None
    return out


def plan_stages(cfg: DistillParams, teacher: LoadedModel) -> list[StagePlan]:
    """Build every stage's model (fresh init) and check the sizes before any training."""
    t_params = vision_parameters(teacher.model)
    plans, previous = [], t_params
    configs = _stage_configs(cfg, teacher)
    for i, (name, model_cfg) in enumerate(configs):
        torch.manual_seed(cfg.seed + i)  # parts left at init are part of the run's seed
        try:
            loaded = build_model(name, model_cfg)
        except (ModelLoadError, RuntimeError, TypeError, KeyError) as exc:
            raise StageError(f"distill stage {i} ({name}): cannot build the model: {exc}") from None
        if cfg.lock_text:
            loaded.model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
        params = vision_parameters(loaded.model)
        if cfg.progressive and params >= previous:
            raise StageError(
                f"distill.progressive stage {i} ({name}) has {params:,} vision parameters, not "
                f"fewer than the previous model's {previous:,}: list shrinking fractions/configs"
            )
        last = i == len(configs) - 1
        epochs = cfg.epochs if last or cfg.stage_epochs is None else cfg.stage_epochs
        plans.append(StagePlan(name, model_cfg, loaded, epochs))
        previous = params
    s_params = vision_parameters(plans[-1].loaded.model)
    if s_params > cfg.max_vision_fraction * t_params:
        key = "distill.progressive" if cfg.progressive else "distill.student"
        raise StageError(
            f"{key}: the student {plans[-1].name!r} has {s_params:,} vision parameters, "
            f"{s_params / t_params:.0%} of the teacher's {t_params:,}; the limit is "
            f"distill.max_vision_fraction = {cfg.max_vision_fraction}: pick a smaller student"
        )
    return plans


def train_stages(
    plans: list[StagePlan],
    teacher: LoadedModel,
    data: ReinforcedDataset,
    cfg: DistillParams,
    loss: DistillationLoss,
    device: torch.device,
    layout: Layout,
) -> tuple[list[dict[str, Any]], InheritReport | None, TrainResult]:
    """Train every stage in order, each inherited from the one before; return the records."""
    t_params = vision_parameters(teacher.model)
    parent, parent_name = teacher, "teacher"
    records, report, result = [], None, None
    for i, plan in enumerate(plans):
        started, cpu = time.perf_counter(), time.process_time()
        student = plan.loaded
        report = inherit_weights(parent.model.cpu(), student.model) if cfg.inherit else None
        tensors = ReinforcedTensors.build(data, student, cfg.extra_caption_p)
        last = i == len(plans) - 1
        result = train(
            student.model,
            tensors,
            DistillObjective(loss),
            cfg.model_copy(update={"epochs": plan.epochs}),
            device,
            log_path=layout.train_log("distill") if last else None,
            desc=f"distill {i + 1}/{len(plans)} {plan.name}",
        )
        params = vision_parameters(student.model)
        records.append(
            {
                "stage": i,
                "model_name": plan.name,
                "vision_params": params,
                "vision_fraction": round(params / t_params, 4),
                "vision_cfg": {k: plan.model_cfg["vision_cfg"].get(k) for k in VISION_KEYS},
                "inherited_from": parent_name if cfg.inherit else None,
                "epochs": plan.epochs,
                "steps": result.steps,
                "final_loss": round(result.final_loss, 5),
                "wall_s": round(time.perf_counter() - started, 2),
                "cpu_s": round(time.process_time() - cpu, 2),
            }
        )
        student.model.cpu()
        parent, parent_name = student, plan.name
    assert result is not None
    return records, report, result


def digits_eval_set(layout: Layout, params: PipelineParams) -> LabelledSet | None:
    """The held-out digits with the eval templates (as the evaluate stage scores them)."""
    try:
        rows = read_pairs(layout.curated, columns=["image", "source", "label", "split"])
    except (FileNotFoundError, ValueError):
        return None
    digits = rows[(rows["split"] == "eval") & (rows["source"] == "digits")]
    digits = digits[digits["label"].notna()]
    labels = digits["label"].astype(str).tolist()
    if len(set(labels)) < 2:
        return None
    return LabelledSet(
        name="digits",
        images=digits["image"].tolist(),
        labels=labels,
        classnames=sorted(set(labels)),
        templates=list(params.ingest.digits.eval_templates),
    )


def zeroshot_acc1(loaded: LoadedModel, digits: LabelledSet, device: torch.device) -> float:
    loaded.model.to(device).eval()
    acc = zeroshot_on(loaded, digits, EVAL_BATCH).acc1
    loaded.model.cpu()
    return round(float(acc), 4)


def train_scratch(
    plan: StagePlan,
    data: ReinforcedDataset,
    cfg: DistillParams,
    steps_epochs: int,
    device: torch.device,
    layout: Layout,
) -> tuple[LoadedModel, TrainResult]:
    """The student's architecture from a fresh init, plain CLIP loss, real captions only."""
    torch.manual_seed(cfg.seed)
    scratch = build_model(plan.name, plan.model_cfg)
    if cfg.lock_text:
        scratch.model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    tensors = ReinforcedTensors.build(data, scratch, extra_caption_p=0.0)
    result = train(
        scratch.model,
        tensors,
        ClipObjective(),
        cfg.model_copy(update={"epochs": steps_epochs}),
        device,
        log_path=layout.train_log("distill_scratch"),
        desc="scratch student",
    )
    return scratch, result


def compare(
    params: PipelineParams,
    layout: Layout,
    teacher: LoadedModel,
    student: LoadedModel,
    plans: list[StagePlan],
    data: ReinforcedDataset,
    total_epochs: int,
    device: torch.device,
) -> dict[str, Any]:
    """Zero-shot digits acc1 of teacher, student and (optionally) the scratch student."""
    cfg = params.distill
    digits = digits_eval_set(layout, params)
    if digits is None:
        write_loss_csv([], layout.train_log("distill_scratch"))
        return {"skipped": "no labelled digits eval rows in the curated table"}
    started = time.perf_counter()
    out: dict[str, Any] = {
        "teacher_zeroshot_acc1": zeroshot_acc1(teacher, digits, device),
        "student_zeroshot_acc1": zeroshot_acc1(student, digits, device),
    }
    out["student_teacher_ratio"] = round(
        out["student_zeroshot_acc1"] / max(out["teacher_zeroshot_acc1"], 1e-9), 4
    )
    out["eval_wall_s"] = round(time.perf_counter() - started, 2)
    if cfg.compare_scratch:
        started, cpu = time.perf_counter(), time.process_time()
        scratch, result = train_scratch(plans[-1], data, cfg, total_epochs, device, layout)
        out["scratch_zeroshot_acc1"] = zeroshot_acc1(scratch, digits, device)
        out["scratch_steps"] = result.steps
        out["student_minus_scratch"] = round(
            out["student_zeroshot_acc1"] - out["scratch_zeroshot_acc1"], 4
        )
        out["scratch_wall_s"] = round(time.perf_counter() - started, 2)
        # CPU seconds of this process: the cost on a shared machine, where wall time is not
        out["scratch_cpu_s"] = round(time.process_time() - cpu, 2)
    else:  # the declared plot exists either way (an empty curve), never a stale one
        write_loss_csv([], layout.train_log("distill_scratch"))
    return out


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2))
    tmp.replace(path)


def run(params: PipelineParams, layout: Layout) -> DistillSummary:
    """Distil the teacher into the student (one or several stages); see the module docstring."""
    started = time.perf_counter()
    cfg = params.distill
    device = pick_device(params.device)
    try:
        data = read_reinforced(layout.reinforced_db)
    except ReinforcedDataError as exc:
        raise StageError(f"{exc}") from None
    teacher = _load_teacher(layout)
    teacher_sha = _check_lineage(teacher, data, layout)
    plans = plan_stages(cfg, teacher)
    loss = build_loss(cfg, data)

    stages, report, result = train_stages(plans, teacher, data, cfg, loss, device, layout)
    student = plans[-1].loaded
    total_epochs = sum(p.epochs for p in plans)
    comparison = compare(params, layout, teacher, student, plans, data, total_epochs, device)
    comparison["distill_steps"] = sum(s["steps"] for s in stages)

    s_params, t_params = vision_parameters(student.model), vision_parameters(teacher.model)
    ratio = round(s_params / t_params, 4)
    scale: float | list[float] = (
        100.0 if cfg.loss == "mobileclip" else cfg.teacher_logit_scale or data.member_logit_scales
    )
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
                "total_steps": comparison["distill_steps"],
                "wall_s": result.wall_s,
                "samples_per_s": result.samples_per_s,
                "vision_params": s_params,
                "teacher_vision_params": t_params,
                "vision_param_ratio": ratio,
                **{k: v for k, v in comparison.items() if isinstance(v, int | float)},
            },
            "teacher_model_name": teacher.name,
            "teacher_logit_scale": scale,
            "loss": cfg.loss,
            "teachers": data.teachers,
            "stages": stages,
            "inheritance": report.to_dict() if report is not None else None,
            "reinforced": {
                "num_images": len(data),
                "num_augmentations": int(data.manifest["num_augmentations"]),
                "extra_captions": data.manifest["extra_captions"],
            },
        },
    )
    wall = round(time.perf_counter() - started, 2)
    write_metrics(
        layout.distill_metrics,
        {
            "vision_params": s_params,
            "teacher_vision_params": t_params,
            "vision_param_ratio": ratio,
            "stages": len(stages),
            **comparison,
            "stage_wall_s": wall,
        },
    )
    return DistillSummary(
        student=student.name,
        loss=cfg.loss,
        train_images=len(data),
        views_per_image=int(data.manifest["num_augmentations"]),
        steps=result.steps,
        final_loss=round(result.final_loss, 5),
        wall_s=wall,
        vision_params=s_params,
        teacher_vision_params=t_params,
        vision_param_ratio=ratio,
        inherited=(
            {k: v for k, v in report.to_dict().items() if k != "initialised_keys"}
            if report is not None
            else None
        ),
        teacher_logit_scale=scale,
        teachers=len(data.teachers),
        stages=stages,
        comparison=comparison,
        weights_sha256=card["weights_sha256"],
    )


def main(argv: list[str] | None = None) -> int:
    return stage_main("distill", run, argv)


if __name__ == "__main__":
    sys.exit(main())
