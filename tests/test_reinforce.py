"""The reinforce stage on a few dozen real digits: table contents and exact view re-creation."""

from __future__ import annotations

import shutil
from pathlib import Path

import lancedb
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_digits

from tasks import reinforce
from tasks.distillation.augment_params import (
    ViewParams,
    apply_views,
    image_rng,
    sample_view,
    sample_views,
)
from tasks.distillation.extra_captions import extra_captions_for
from tasks.distillation.reinforced_table import (
    MANIFEST,
    VIEWS,
    ReinforcedDataError,
    read_reinforced,
)
from tasks.errors import StageError
from tasks.images import decode_images, normalize
from tasks.layout import Layout
from tasks.models import LoadedModel, create_model, encode_texts, load_model, save_model
from tasks.pair_table import write_pairs
from tasks.params import PipelineParams, parse_params
from tasks.sources.digits import CLASS_NAMES, digit_image
from tasks.sources.image_checks import store_image

TEACHER = "clipops-vit-s-minilm"
K = 3


def write_digit_pairs(layout: Layout, n_train: int = 24, n_eval: int = 6) -> pd.DataFrame:
    """A curated table of real sklearn digits (PAIR_SCHEMA), train rows then eval rows."""
    bunch = load_digits()
    rows = []
    for i in range(n_train + n_eval):
        label = CLASS_NAMES[bunch.target[i]]
        stored = store_image(digit_image(bunch.images[i], 32), 128)
        split = "train" if i < n_train else "eval"
        template = "a handwritten {}." if split == "train" else "someone wrote the digit {}."
        rows.append(
            {
                "id": f"digits-{i:04d}",
                "sha256": stored.sha256,
                "image": stored.data,
                "width": stored.width,
                "height": stored.height,
                "caption": template.format(label) if i % 2 else f"the number {label} by hand.",
                "source": "digits",
                "label": label,
                "split": split,
            }
        )
    df = pd.DataFrame(rows)
    write_pairs(df, layout.curated)
    return df


def save_random_teacher(layout: Layout, seed: int = 0) -> None:
    """A teacher with random vision weights (enough to check bookkeeping and re-creation)."""
    torch.manual_seed(seed)
    loaded = create_model(TEACHER, lock_text=True)
    save_model(
        loaded.model,
        loaded.name,
        loaded.model_cfg,
        layout.model_dir("teacher"),
        {"stage": "teacher", "parent": None},
    )


def reinforce_params(**distill: object) -> PipelineParams:
    return parse_params(
        {
            "device": "cpu",
            "reinforce": {"num_augmentations": K, "batch_size": 16, "crop_scale_min": 0.5},
            "distill": {"epochs": 1, "batch_size": 8, "warmup_steps": 0, **distill},
        }
    )


def build_reinforced_project(root: Path) -> tuple[Layout, pd.DataFrame]:
    """Curated digits + a saved teacher + the reinforce stage's output under `root`."""
    layout = Layout.at(root)
    pairs = write_digit_pairs(layout)
    save_random_teacher(layout)
    reinforce.run(reinforce_params(), layout)
    return layout, pairs


@pytest.fixture(scope="module")
def reinforced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Layout, pd.DataFrame]:
    return build_reinforced_project(tmp_path_factory.mktemp("reinforce") / "project")


@pytest.fixture(scope="module")
def teacher(reinforced) -> LoadedModel:
    """The saved teacher, loaded back from disk once for the module."""
    return load_model(reinforced[0].model_dir("teacher"))


def test_tables_hold_each_train_image_k_times(reinforced, teacher: LoadedModel) -> None:
    layout, pairs = reinforced
    train_ids = sorted(pairs.loc[pairs["split"] == "train", "id"])
    data = read_reinforced(layout.reinforced_db)
    assert data.pair_ids == train_ids  # eval rows never enter the reinforced dataset
    assert data.view_vectors.shape == (len(train_ids), K, 256)
    assert data.text_vectors.shape == (len(train_ids), 256)
    norms = np.linalg.norm(data.view_vectors, axis=-1)
    assert np.allclose(norms, 1.0, atol=1e-4)
    views = lancedb.connect(str(layout.reinforced_db)).open_table(VIEWS).to_pandas()
    assert sorted(views.groupby("pair_id")["aug_index"].apply(sorted).iloc[0]) == [0, 1, 2]
    assert len({p for p in views["aug_params"]}) == len(views)  # every view is its own crop
    m = data.manifest
    assert m["teacher_weights_sha256"] == teacher.card["weights_sha256"]
    assert (m["num_augmentations"], m["image_size"], m["num_images"]) == (K, 32, len(train_ids))
    assert m["crop_scale_min"] == 0.5 and 0 < m["teacher_logit_scale"] < 101


def test_recreated_view_reproduces_stored_embedding(reinforced, teacher: LoadedModel) -> None:
    layout, _ = reinforced
    data = read_reinforced(layout.reinforced_db)
    rows = [0, 5, 11]
    pixels = decode_images([data.images[i] for i in rows], teacher.image_size)
    x = normalize(pixels, teacher.preprocess_cfg["mean"], teacher.preprocess_cfg["std"])
    for aug in range(K):
        views = [ViewParams.from_json(data.views[i][aug].to_json()) for i in rows]
        with torch.no_grad():
            emb = teacher.model.encode_image(apply_views(x, views), normalize=True).numpy()
        np.testing.assert_allclose(emb, data.view_vectors[rows, aug], atol=1e-5)
    # ...and the stored views really are augmented: the plain image embeds differently.
    with torch.no_grad():
        plain = teacher.model.encode_image(x, normalize=True).numpy()
    assert np.abs(plain - data.view_vectors[rows, 0]).max() > 1e-3


def test_caption_vectors_are_the_teachers(reinforced, teacher: LoadedModel) -> None:
    layout, _ = reinforced
    data = read_reinforced(layout.reinforced_db)
    expected = encode_texts(teacher, data.captions)
    np.testing.assert_allclose(data.text_vectors, expected, atol=1e-5)


def test_views_depend_only_on_seed_and_pair_id() -> None:
    a = sample_views(0, "digits-0001", 4, 0.6)
    assert a == sample_views(0, "digits-0001", 4, 0.6)
    assert a != sample_views(1, "digits-0001", 4, 0.6)
    assert a != sample_views(0, "digits-0002", 4, 0.6)


def test_sampled_crops_respect_scale_ratio_and_flip_rate() -> None:
    rng = image_rng(3, "x")
    views = [sample_view(rng, 0.6) for _ in range(400)]
    for v in views:
        x0, y0, x1, y1 = v.box
        w, h = x1 - x0, y1 - y0
        assert w * h >= 0.6 - 1e-9 or (w, h) == (1.0, 1.0)
        assert 3 / 4 - 1e-9 <= w / h <= 4 / 3 + 1e-9
    assert 0.4 < np.mean([v.flip for v in views]) < 0.6
    assert not any(sample_view(rng, 0.6, flip_p=0.0).flip for _ in range(50))
    with pytest.raises(ValueError, match="scale_min"):
        sample_view(rng, 0.0)


def test_apply_views_identity_flip_and_crop() -> None:
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    full = ViewParams((0.0, 0.0, 1.0, 1.0), flip=False)
    mirrored = ViewParams((0.0, 0.0, 1.0, 1.0), flip=True)
    out = apply_views(images, [full, mirrored])
    assert torch.allclose(out[0], images[0], atol=1e-4)
    assert torch.allclose(out[1], images[1].flip(-1), atol=1e-4)
    # The left half, stretched: output column pairs (0,1) both sample near input column 0..1.
    left = apply_views(images[:1], [ViewParams((0.0, 0.0, 0.5, 1.0), flip=False)])
    assert left[0, 0, 0, 7] < images[0, 0, 0, 4]
    with pytest.raises(ValueError, match="float"):
        apply_views(images.to(torch.uint8), [full, full])


def test_view_params_json_round_trip_and_errors() -> None:
    v = ViewParams((0.1, 0.2, 0.7, 0.9000000000000001), flip=True)
    assert ViewParams.from_json(v.to_json()) == v  # floats survive JSON bit-exactly
    with pytest.raises(ValueError, match="malformed"):
        ViewParams.from_json('{"box": [0, 0, 1]')
    with pytest.raises(ValueError, match="bool flip"):
        ViewParams.from_json('{"box": [0, 0, 1, 1], "flip": 1}')
    with pytest.raises(ValueError, match="crop box"):
        ViewParams((0.5, 0.0, 0.4, 1.0), flip=False)


def test_missing_teacher_or_train_rows_stop_the_stage(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path / "p")
    write_digit_pairs(layout, n_train=4, n_eval=2)
    with pytest.raises(StageError, match="cannot load the teacher"):
        reinforce.run(reinforce_params(), layout)
    write_digit_pairs(layout, n_train=0, n_eval=3)
    with pytest.raises(StageError, match="no train rows"):
        reinforce.run(reinforce_params(), layout)


def test_incomplete_dataset_is_rejected_with_a_reason(reinforced, tmp_path: Path) -> None:
    layout, _ = reinforced
    with pytest.raises(ReinforcedDataError, match="run the reinforce stage"):
        read_reinforced(tmp_path / "nowhere")
    copy = tmp_path / "copy"
    shutil.copytree(layout.reinforced_db, copy)
    db = lancedb.connect(str(copy))
    db.open_table(VIEWS).delete("pair_id = 'digits-0003' AND aug_index = 1")
    with pytest.raises(ReinforcedDataError, match="lack views"):
        read_reinforced(copy)
    db.drop_table(MANIFEST)
    with pytest.raises(ReinforcedDataError, match="no table 'manifest'"):
        read_reinforced(copy)


# --- extra captions ----------------------------------------------------------------------


def test_extra_captions_are_other_train_templates_with_teacher_vectors(
    reinforced, teacher: LoadedModel
) -> None:
    layout, pairs = reinforced
    data = read_reinforced(layout.reinforced_db)
    labels = pairs.set_index("id")["label"]
    templates = PipelineParams().ingest.digits.train_templates
    eval_templates = PipelineParams().ingest.digits.eval_templates
    for i, pid in enumerate(data.pair_ids):
        extras = data.extra_captions[i]
        allowed = {t.format(labels[pid]) for t in templates}
        assert len(extras) == 5 and set(extras) <= allowed
        assert data.captions[i] not in extras and len(set(extras)) == 5
        assert not {t.format(labels[pid]) for t in eval_templates} & set(extras)
    rows = [0, 7]
    for i in rows:
        expected = encode_texts(teacher, data.extra_captions[i])
        np.testing.assert_allclose(data.extra_vectors[i], expected, atol=1e-5)
    assert data.manifest["extra_captions"] == "templates"


def _train_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["digits-0001", "textiles-a", "shapes-b", "user-c"],
            "caption": [
                "a handwritten one.",
                "a scan of nominal cloth.",
                "a big red circle in the top left and a small blue square in the centre",
                "my cat",
            ],
            "source": ["digits", "textiles", "shapes", "user"],
            "label": ["one", "nominal", None, None],
        }
    )


def test_template_extras_per_source() -> None:
    extras = extra_captions_for(_train_rows(), PipelineParams(), Path("."))
    assert extras.by_id["digits-0001"][0] == "a photo of the digit one."
    assert "a handwritten one." not in extras.by_id["digits-0001"]
    assert set(extras.by_id["textiles-a"]) == {
        "a photo of nominal fabric.",
        "a close-up of nominal textile with an even weave.",
        "a nominal piece of woven fabric without flaws.",
    }
    assert extras.by_id["shapes-b"][0] == (
        "a small blue square in the centre and a big red circle in the top left"
    )
    assert extras.by_id["user-c"] == []
    none = extra_captions_for(
        _train_rows(), parse_params({"reinforce": {"extra_captions": "none"}}), Path(".")
    )
    assert none.total == 0


def test_extra_captions_from_user_files(tmp_path: Path) -> None:
    csv_path = tmp_path / "extra.csv"
    csv_path.write_text(
        "id,caption\nuser-c,a cat on a sofa\nuser-c,my cat\nuser-c,\nnobody,lost caption\n"
        "user-c,a sleeping cat\n"
    )
    params = parse_params({"reinforce": {"extra_captions": "extra.csv", "max_extra_captions": 5}})
    extras = extra_captions_for(_train_rows(), params, tmp_path)
    assert extras.by_id["user-c"] == ["a cat on a sofa", "a sleeping cat"]  # real one removed
    assert extras.by_id["digits-0001"] == []
    assert extras.dropped == {"empty_caption": 1, "id_not_in_train_split": 1}
    jsonl = tmp_path / "extra.jsonl"
    jsonl.write_text('{"id": "shapes-b", "captions": ["two shapes", "red and blue"]}\nnot json\n')
    params = parse_params({"reinforce": {"extra_captions": str(jsonl), "max_extra_captions": 1}})
    extras = extra_captions_for(_train_rows(), params, tmp_path)
    assert len(extras.by_id["shapes-b"]) == 1  # capped, seeded choice
    assert extras.by_id["shapes-b"][0] in {"two shapes", "red and blue"}
    assert extras.dropped == {"malformed_json": 1}
    for bad, match in (("missing.csv", "not found"), ("x.txt", "unknown format")):
        (tmp_path / "x.txt").write_text("id,caption\n")
        params = parse_params({"reinforce": {"extra_captions": bad}})
        with pytest.raises(StageError, match=match):
            extra_captions_for(_train_rows(), params, tmp_path)
    (tmp_path / "cols.csv").write_text("pair,text\na,b\n")
    with pytest.raises(StageError, match="id and caption"):
        extra_captions_for(
            _train_rows(), parse_params({"reinforce": {"extra_captions": "cols.csv"}}), tmp_path
        )
