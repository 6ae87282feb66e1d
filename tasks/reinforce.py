"""reinforce: the MobileCLIP reinforced dataset from the curated train pairs and the teacher(s).

Reads `reinforce.*` (plus `device`): for every curated TRAIN image, `num_augmentations`
seeded views (random resized crop with area share >= `crop_scale_min`, flipped with chance
`flip_p`) are sampled, their parameters stored as JSON, and each teacher's embedding of each
view written with them; the real caption and the image's extra captions
(`reinforce.extra_captions`, see tasks.distillation.extra_captions) are embedded once per
distinct text. With several `reinforce.teachers` (an ensemble) every stored vector is the
concatenation of the members' L2-normalised embeddings, as MobileCLIP stores its two
ViT-L/14 teachers. Output: the LanceDB database at `layout.reinforced_db` (tables described
in `tasks.distillation.reinforced_table`). The distill stage then trains a student without
ever running a teacher.

Inputs: `layout.curated`, the teacher folders (default `models/teacher`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel
from tqdm.auto import tqdm

from tasks.device import autocast, pick_device
from tasks.distillation.augment_params import ViewParams, apply_views, sample_views
from tasks.distillation.extra_captions import extra_captions_for
from tasks.distillation.reinforced_table import ReinforcedWriter
from tasks.errors import StageError
from tasks.images import ImageDecodeError, decode_images, normalize
from tasks.layout import Layout
from tasks.models import LoadedModel, ModelLoadError, encode_texts, load_model, sha256_file
from tasks.pair_table import read_pairs
from tasks.params import PipelineParams, ReinforceParams
from tasks.stage_cli import stage_main


class ReinforceSummary(BaseModel):
    """What the reinforce stage wrote."""

    images: int
    views: int
    captions: int
    unique_captions: int
    extra_captions: int
    extra_captions_source: str
    extra_captions_dropped: dict[str, int]
    images_without_extra_captions: int
    teachers: int
    embed_dim: int
    teacher_weights_sha256: str
    teacher_logit_scale: float
    seconds: float


@torch.no_grad()
def encode_views(
    teacher: LoadedModel, images_uint8: torch.Tensor, views: list[ViewParams]
) -> np.ndarray:
    """Teacher embeddings (L2-normalised float32) of the given views of `images_uint8`.

    The same path is used to re-create a view later: normalise -> `apply_views` -> encode.
    """
    device = teacher.device
    cfg = teacher.preprocess_cfg
    x = normalize(images_uint8.to(device), cfg["mean"], cfg["std"])
    x = apply_views(x, views)
    with autocast(device):
        feats = teacher.model.encode_image(x)
    return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()


@torch.no_grad()
def encode_views_ensemble(
    teachers: list[LoadedModel], images: list[bytes], ids: list[str], views: list[ViewParams]
) -> np.ndarray:
    """Each view (`views[i]` of `images[i]`) embedded by every member, concatenated."""
    parts = []
    for teacher in teachers:
        try:
            pixels = decode_images(images, teacher.image_size, ids=ids, progress=False)
        except ImageDecodeError as exc:
            raise StageError(f"{exc}; re-run ingest/curate") from None
        parts.append(encode_views(teacher, pixels, views))
    return np.concatenate(parts, axis=1)


def encode_texts_ensemble(teachers: list[LoadedModel], texts: list[str], batch_size: int):
    """Every member's caption embeddings, concatenated in member order."""
    return np.concatenate([encode_texts(t, texts, batch_size=batch_size) for t in teachers], 1)


def load_train_pairs(layout: Layout) -> pd.DataFrame:
    """The curated TRAIN rows; a missing table or an empty train split stops the stage."""
    try:
        pairs = read_pairs(layout.curated)
    except (FileNotFoundError, ValueError) as exc:
        raise StageError(str(exc)) from None
    train = pairs[pairs["split"] == "train"].reset_index(drop=True)
    if train.empty:
        raise StageError(f"{layout.curated} has no train rows; check the curate stage")
    if train["id"].duplicated().any():
        dup = train.loc[train["id"].duplicated(), "id"].iloc[0]
        raise StageError(f"pair id {dup!r} appears twice in {layout.curated}")
    return train


def teacher_dir(layout: Layout, path: str) -> Path:
    """A `reinforce.teachers` entry as a folder (relative entries are under the root)."""
    folder = Path(path)
    return folder if folder.is_absolute() else layout.root / folder


def load_teachers(layout: Layout, paths: list[str], device: torch.device) -> list[LoadedModel]:
    """The ensemble members, in eval mode on `device`."""
    members = []
    for path in paths:
        try:
            members.append(load_model(teacher_dir(layout, path), device=device))
        except ModelLoadError as exc:
            msg = f"cannot load the teacher (reinforce.teachers: {path}): {exc}"
            raise StageError(msg) from None
    return members


def load_teacher(layout: Layout, device: torch.device) -> LoadedModel:
    """The trained teacher (models/teacher), in eval mode on `device`."""
    return load_teachers(layout, [str(layout.model_dir("teacher"))], device)[0]


def member_record(layout: Layout, path: str, teacher: LoadedModel) -> dict:
    """What the manifest says about one ensemble member."""
    sha = teacher.card.get("weights_sha256") or sha256_file(
        teacher_dir(layout, path) / "model.safetensors"
    )
    return {
        "path": path,
        "model_name": teacher.name,
        "weights_sha256": sha,
        "embed_dim": int(teacher.model_cfg["embed_dim"]),
        "logit_scale": float(teacher.model.logit_scale.exp().item()),
        "image_size": teacher.image_size,
    }


def _write_views(
    writer: ReinforcedWriter,
    teachers: list[LoadedModel],
    train: pd.DataFrame,
    cfg: ReinforceParams,
) -> int:
    """Decode, augment and embed every train image's k views, batch by batch."""
    ids, k = train["id"].tolist(), cfg.num_augmentations
    # Views are listed image-major, so a batch of views needs only a slice of images.
    per_batch = max(1, cfg.batch_size // k)
    written = 0
    for start in tqdm(range(0, len(ids), per_batch), desc="reinforce: teacher views"):
        chunk = ids[start : start + per_batch]
        images = train["image"].iloc[start : start + per_batch].tolist()
        views = [sample_views(cfg.seed, pid, k, cfg.crop_scale_min, cfg.flip_p) for pid in chunk]
        flat = [v for per_image in views for v in per_image]
        repeated = [img for img in images for _ in range(k)]
        repeated_ids = [pid for pid in chunk for _ in range(k)]
        vectors = encode_views_ensemble(teachers, repeated, repeated_ids, flat)
        writer.add_views(
            [pid for pid in chunk for _ in range(k)],
            [a for _ in chunk for a in range(k)],
            [v.to_json() for v in flat],
            vectors,
        )
        written += len(flat)
    return written


def run(params: PipelineParams, layout: Layout) -> ReinforceSummary:
    """Build the reinforced dataset at `layout.reinforced_db` (see module docstring)."""
    started = time.perf_counter()
    cfg = params.reinforce
    device = pick_device(params.device)
    train = load_train_pairs(layout)
    teachers = load_teachers(layout, cfg.teachers, device)
    members = [member_record(layout, p, t) for p, t in zip(cfg.teachers, teachers, strict=True)]
    dim = sum(m["embed_dim"] for m in members)
    writer = ReinforcedWriter(layout.reinforced_db, dim)

    n_views = _write_views(writer, teachers, train, cfg)
    extras = extra_captions_for(train, params, layout.root)
    # Each distinct caption is embedded once (class-level captions repeat a lot).
    real = train["caption"].tolist()
    extra_rows = [(pid, i, c) for pid in train["id"] for i, c in enumerate(extras.by_id[pid])]
    unique = sorted(set(real) | {c for _, _, c in extra_rows})
    unique_vectors = encode_texts_ensemble(teachers, unique, cfg.batch_size)
    index = {c: i for i, c in enumerate(unique)}
    writer.write_captions(train["id"].tolist(), real, unique_vectors[[index[c] for c in real]])
    writer.write_extra_captions(
        [pid for pid, _, _ in extra_rows],
        [i for _, i, _ in extra_rows],
        [c for _, _, c in extra_rows],
        unique_vectors[[index[c] for _, _, c in extra_rows]].reshape(len(extra_rows), dim),
    )
    writer.write_images(train)

    first = members[0]
    writer.write_manifest(
        {
            "teacher_stage": "teacher",
            "teacher_model_name": first["model_name"],
            "teacher_weights_sha256": first["weights_sha256"],
            "teacher_logit_scale": first["logit_scale"],
            "image_size": first["image_size"],
            "embed_dim": dim,
            "num_augmentations": cfg.num_augmentations,
            "crop_scale_min": cfg.crop_scale_min,
            "flip_p": cfg.flip_p,
            "seed": cfg.seed,
            "num_images": len(train),
            "teachers_json": json.dumps(members),
            "extra_captions": extras.source,
        }
    )
    return ReinforceSummary(
        images=len(train),
        views=n_views,
        captions=len(train),
        unique_captions=len(unique),
        extra_captions=len(extra_rows),
        extra_captions_source=extras.source,
        extra_captions_dropped=extras.dropped,
        images_without_extra_captions=sum(1 for v in extras.by_id.values() if not v),
        teachers=len(members),
        embed_dim=dim,
        teacher_weights_sha256=first["weights_sha256"],
        teacher_logit_scale=round(first["logit_scale"], 4),
        seconds=round(time.perf_counter() - started, 2),
    )


def main(argv: list[str] | None = None) -> int:
    return stage_main("reinforce", run, argv)


if __name__ == "__main__":
    sys.exit(main())
