"""reinforce: the MobileCLIP reinforced dataset from the curated train pairs and the teacher.

Reads `reinforce.*` (plus `device`): for every curated TRAIN image, `num_augmentations`
seeded views (random resized crop with area share >= `crop_scale_min`, flipped with
chance `flip_p`) are
sampled, their parameters stored as JSON, and the teacher's embedding of each view written
with them; each caption is embedded once. Output: the LanceDB database at
`layout.reinforced_db` (tables described in `tasks.distillation.reinforced_table`). The
distill stage then trains a student without ever running the teacher.

Inputs: `layout.curated`, `layout.model_dir("teacher")`.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel
from tqdm.auto import tqdm

from tasks.device import autocast, pick_device
from tasks.distillation.augment_params import ViewParams, apply_views, sample_views
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


def load_teacher(layout: Layout, device: torch.device) -> LoadedModel:
    """The trained teacher, in eval mode on `device`."""
    try:
        return load_model(layout.model_dir("teacher"), device=device)
    except ModelLoadError as exc:
        raise StageError(f"cannot load the teacher: {exc}") from None


def _write_views(
    writer: ReinforcedWriter,
    teacher: LoadedModel,
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
        try:
            pixels = decode_images(
                train["image"].iloc[start : start + per_batch].tolist(),
                teacher.image_size,
                ids=chunk,
                progress=False,
            )
        except ImageDecodeError as exc:
            raise StageError(f"{exc}; re-run ingest/curate") from None
        views = [sample_views(cfg.seed, pid, k, cfg.crop_scale_min, cfg.flip_p) for pid in chunk]
        flat = [v for per_image in views for v in per_image]
        vectors = encode_views(teacher, pixels.repeat_interleave(k, dim=0), flat)
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
    teacher = load_teacher(layout, device)
    dim = int(teacher.model_cfg["embed_dim"])
    writer = ReinforcedWriter(layout.reinforced_db, dim)

    n_views = _write_views(writer, teacher, train, cfg)
    # Each distinct caption is embedded once (class-level captions repeat a lot).
    unique = sorted(set(train["caption"]))
    unique_vectors = encode_texts(teacher, unique, batch_size=cfg.batch_size)
    index = {c: i for i, c in enumerate(unique)}
    text_vectors = unique_vectors[[index[c] for c in train["caption"]]]
    writer.write_captions(train["id"].tolist(), train["caption"].tolist(), text_vectors)
    writer.write_images(train)

    weights_sha = teacher.card.get("weights_sha256") or sha256_file(
        layout.model_dir("teacher") / "model.safetensors"
    )
    logit_scale = float(teacher.model.logit_scale.exp().item())
    writer.write_manifest(
        {
            "teacher_stage": "teacher",
            "teacher_model_name": teacher.name,
            "teacher_weights_sha256": weights_sha,
            "teacher_logit_scale": logit_scale,
            "image_size": teacher.image_size,
            "embed_dim": dim,
            "num_augmentations": cfg.num_augmentations,
            "crop_scale_min": cfg.crop_scale_min,
            "flip_p": cfg.flip_p,
            "seed": cfg.seed,
            "num_images": len(train),
        }
    )
    return ReinforceSummary(
        images=len(train),
        views=n_views,
        captions=len(train),
        unique_captions=len(unique),
        embed_dim=dim,
        teacher_weights_sha256=weights_sha,
        teacher_logit_scale=round(logit_scale, 4),
        seconds=round(time.perf_counter() - started, 2),
    )


def main(argv: list[str] | None = None) -> int:
    return stage_main("reinforce", run, argv)


if __name__ == "__main__":
    sys.exit(main())
