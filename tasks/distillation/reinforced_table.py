"""The reinforced dataset (MobileCLIP's DataCompDR, in small): LanceDB tables, declared once.

A LanceDB database directory (`layout.reinforced_db`) holding five tables:

- `images`: pair_id, sha256, source, label, image (encoded bytes): the training images, so
  the dataset is self-contained (a view is re-created from these bytes and its parameters);
- `image_views`: pair_id, aug_index, aug_params (JSON, see augment_params), vector: the
  teacher's L2-normalised embedding of each stored view;
- `captions`: pair_id, caption, vector: the teacher's embedding of each pair's caption;
- `extra_captions`: pair_id, caption_index, caption, vector: further true captions of the
  image (other templates of its source, or the user's), MobileCLIP's synthetic captions;
- `manifest`: one row naming the teacher (stage, model name, weights sha256, logit scale),
  every ensemble member (`teachers_json`), the image size and the augmentation settings,
  so a reader can check what it trains on.

With an ensemble, every `vector` is the concatenation of the members' L2-normalised
embeddings in manifest order (MobileCLIP stores 2 x 768 for its two ViT-L/14 teachers).

Every table is rewritten as a whole by the reinforce stage (mode "overwrite").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.distillation.augment_params import ViewParams

IMAGES, VIEWS, CAPTIONS, MANIFEST = "images", "image_views", "captions", "manifest"
EXTRA_CAPTIONS = "extra_captions"
TABLES = (IMAGES, VIEWS, CAPTIONS, EXTRA_CAPTIONS, MANIFEST)


class ReinforcedDataError(ValueError):
    """The reinforced dataset is missing, incomplete or inconsistent."""


def images_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("pair_id", pa.string(), nullable=False),
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("label", pa.string(), nullable=True),
            pa.field("image", pa.binary(), nullable=False),
        ],
        metadata={"clipops.table": "training images of the reinforced dataset"},
    )


def views_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("pair_id", pa.string(), nullable=False),
            pa.field("aug_index", pa.int32(), nullable=False),
            pa.field("aug_params", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
        ],
        metadata={"clipops.table": "teacher image embedding per stored augmentation"},
    )


def captions_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("pair_id", pa.string(), nullable=False),
            pa.field("caption", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
        ],
        metadata={"clipops.table": "teacher text embedding per caption"},
    )


def extra_captions_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("pair_id", pa.string(), nullable=False),
            pa.field("caption_index", pa.int32(), nullable=False),
            pa.field("caption", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
        ],
        metadata={"clipops.table": "teacher text embedding per extra caption of an image"},
    )


def manifest_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("teacher_stage", pa.string(), nullable=False),
            pa.field("teacher_model_name", pa.string(), nullable=False),
            pa.field("teacher_weights_sha256", pa.string(), nullable=False),
            pa.field("teacher_logit_scale", pa.float64(), nullable=False),
            pa.field("image_size", pa.int32(), nullable=False),
            pa.field("embed_dim", pa.int32(), nullable=False),
            pa.field("num_augmentations", pa.int32(), nullable=False),
            pa.field("crop_scale_min", pa.float64(), nullable=False),
            pa.field("flip_p", pa.float64(), nullable=False),
            pa.field("seed", pa.int64(), nullable=False),
            pa.field("num_images", pa.int64(), nullable=False),
            pa.field("teachers_json", pa.string(), nullable=False),
            pa.field("extra_captions", pa.string(), nullable=False),
        ],
        metadata={"clipops.table": "what produced the reinforced dataset"},
    )


def vectors_column(vectors: np.ndarray, dim: int) -> pa.FixedSizeListArray:
    """A (n, dim) float32 array as an Arrow fixed-size-list column (no per-row Python lists)."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, dim)


class ReinforcedWriter:
    """Writes the four tables; views arrive in batches (`add_views`) to bound memory."""

    def __init__(self, path: str | Path, dim: int) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.db = lancedb.connect(str(self.path))
        self.dim = dim
        self.views = self.db.create_table(VIEWS, schema=views_schema(dim), mode="overwrite")

    def add_views(
        self, pair_ids: list[str], aug_index: list[int], params: list[str], vectors: np.ndarray
    ) -> None:
        if not np.isfinite(vectors).all():
            raise ReinforcedDataError("teacher produced non-finite image embeddings")
        table = pa.Table.from_arrays(
            [
                pa.array(pair_ids, pa.string()),
                pa.array(aug_index, pa.int32()),
                pa.array(params, pa.string()),
                vectors_column(vectors, self.dim),
            ],
            schema=views_schema(self.dim),
        )
        self.views.add(table)

    def write_images(self, pairs: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(
            pairs.rename(columns={"id": "pair_id"})[images_schema().names],
            schema=images_schema(),
            preserve_index=False,
        )
        self.db.create_table(IMAGES, data=table, schema=images_schema(), mode="overwrite")

    def write_captions(self, pair_ids: list[str], captions: list[str], vectors: np.ndarray) -> None:
        if not np.isfinite(vectors).all():
            raise ReinforcedDataError("teacher produced non-finite text embeddings")
        table = pa.Table.from_arrays(
            [
                pa.array(pair_ids, pa.string()),
                pa.array(captions, pa.string()),
                vectors_column(vectors, self.dim),
            ],
            schema=captions_schema(self.dim),
        )
        schema = captions_schema(self.dim)
        self.db.create_table(CAPTIONS, data=table, schema=schema, mode="overwrite")

    def write_extra_captions(
        self, pair_ids: list[str], index: list[int], captions: list[str], vectors: np.ndarray
    ) -> None:
        """Every extra caption of every image (possibly none: the table is still written)."""
        if len(vectors) and not np.isfinite(vectors).all():
            raise ReinforcedDataError("teacher produced non-finite extra-caption embeddings")
        schema = extra_captions_schema(self.dim)
        table = pa.Table.from_arrays(
            [
                pa.array(pair_ids, pa.string()),
                pa.array(index, pa.int32()),
                pa.array(captions, pa.string()),
                vectors_column(vectors.reshape(-1, self.dim), self.dim),
            ],
            schema=schema,
        )
        self.db.create_table(EXTRA_CAPTIONS, data=table, schema=schema, mode="overwrite")

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        table = pa.Table.from_pylist([manifest], schema=manifest_schema())
        self.db.create_table(MANIFEST, data=table, schema=manifest_schema(), mode="overwrite")


@dataclass
class ReinforcedDataset:
    """The reinforced dataset in memory, rows aligned by pair.

    `view_vectors[i, a]` is the teacher embedding of view `views[i][a]` of image `images[i]`;
    `text_vectors[i]` the teacher embedding of `captions[i]`; `extra_captions[i]` the extra
    captions of image i and `extra_vectors[i]` their embeddings (`[E_i, D]`, E_i may be 0).
    `teachers` lists the ensemble members (model name, sha256, embed_dim, logit scale).
    """

    pair_ids: list[str]
    images: list[bytes]
    captions: list[str]
    text_vectors: np.ndarray  # (N, D)
    views: list[list[ViewParams]]  # N x k
    view_vectors: np.ndarray  # (N, k, D)
    manifest: dict[str, Any]
    extra_captions: list[list[str]]
    extra_vectors: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.pair_ids)

    @property
    def teachers(self) -> list[dict[str, Any]]:
        """The ensemble members in vector order (one for a single teacher)."""
        return json.loads(self.manifest["teachers_json"])

    @property
    def member_dims(self) -> list[int]:
        return [int(t["embed_dim"]) for t in self.teachers]

    @property
    def member_logit_scales(self) -> list[float]:
        return [float(t["logit_scale"]) for t in self.teachers]


def _read_table(db: Any, name: str, path: Path) -> pd.DataFrame:
    if name not in db.list_tables().tables:
        raise ReinforcedDataError(
            f"reinforced dataset {path} has no table {name!r}: run the reinforce stage first"
        )
    return db.open_table(name).to_arrow().to_pandas()


def read_reinforced(path: str | Path) -> ReinforcedDataset:
    """Load and check the reinforced dataset: every image has a caption and exactly k views."""
    path = Path(path)
    if not path.is_dir():
        raise ReinforcedDataError(
            f"reinforced dataset {path} not found: run the reinforce stage first"
        )
    db = lancedb.connect(str(path))
    manifest_rows = _read_table(db, MANIFEST, path).to_dict("records")
    if len(manifest_rows) != 1:
        raise ReinforcedDataError(f"{path}: manifest must have one row, has {len(manifest_rows)}")
    manifest = manifest_rows[0]
    k = int(manifest["num_augmentations"])
    images = _read_table(db, IMAGES, path).set_index("pair_id")
    captions = _read_table(db, CAPTIONS, path).set_index("pair_id")
    views = _read_table(db, VIEWS, path).sort_values(["pair_id", "aug_index"])

    pair_ids = sorted(images.index)
    missing_caption = sorted(set(pair_ids) - set(captions.index))
    if missing_caption:
        raise ReinforcedDataError(
            f"{path}: {len(missing_caption)} images lack a caption, e.g. {missing_caption[0]}"
        )
    counts = views.groupby("pair_id")["aug_index"].apply(list)
    expected = list(range(k))
    bad = [pid for pid in pair_ids if counts.get(pid, []) != expected]
    if bad:
        raise ReinforcedDataError(
            f"{path}: {len(bad)} images lack views 0..{k - 1} (e.g. {bad[0]}): re-run reinforce"
        )
    if len(views) != k * len(pair_ids):
        raise ReinforcedDataError(f"{path}: image_views holds views of images it does not store")

    views = views.set_index("pair_id").loc[pair_ids]
    view_vectors = np.stack(views["vector"].to_numpy()).astype(np.float32)
    view_vectors = view_vectors.reshape(len(pair_ids), k, -1)
    params = [ViewParams.from_json(p) for p in views["aug_params"]]
    captions = captions.loc[pair_ids]
    extra_captions, extra_vectors = _read_extras(db, path, pair_ids, view_vectors.shape[-1])
    return ReinforcedDataset(
        pair_ids=pair_ids,
        images=list(images.loc[pair_ids, "image"]),
        captions=list(captions["caption"]),
        text_vectors=np.stack(captions["vector"].to_numpy()).astype(np.float32),
        views=[params[i * k : (i + 1) * k] for i in range(len(pair_ids))],
        view_vectors=view_vectors,
        manifest=manifest,
        extra_captions=extra_captions,
        extra_vectors=extra_vectors,
    )


def _read_extras(
    db: Any, path: Path, pair_ids: list[str], dim: int
) -> tuple[list[list[str]], list[np.ndarray]]:
    """Extra captions and vectors per image, in caption_index order (empty lists allowed)."""
    table = _read_table(db, EXTRA_CAPTIONS, path)
    unknown = sorted(set(table["pair_id"]) - set(pair_ids))
    if unknown:
        raise ReinforcedDataError(
            f"{path}: extra_captions names {len(unknown)} images it does not store, "
            f"e.g. {unknown[0]}: re-run reinforce"
        )
    table = table.sort_values(["pair_id", "caption_index"])
    groups = dict(list(table.groupby("pair_id", sort=False)))
    captions: list[list[str]] = []
    vectors: list[np.ndarray] = []
    for pid in pair_ids:
        rows = groups.get(pid)
        if rows is None:
            captions.append([])
            vectors.append(np.zeros((0, dim), dtype=np.float32))
            continue
        captions.append(rows["caption"].tolist())
        vectors.append(np.stack(rows["vector"].to_numpy()).astype(np.float32).reshape(-1, dim))
    return captions, vectors
