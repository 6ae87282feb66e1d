"""CLIP-score filter semantics, pool embedding with a real tiny model, and the model loader."""

import io

import numpy as np
import pytest
from PIL import Image

from storage.registry import Registry
from tasks.curation.clip_score import CLIP_SCORE_REASONS, clip_score_filter, clip_scores
from tasks.curation.scoring_model import embed_pool, load_scoring_model
from tasks.errors import StageError
from tasks.models import create_model, encode_images, encode_texts, save_model

MODEL = "clipops-vit-s-text-s"  # 32 px, 4-layer ViT, 3-layer text tower: builds in ~1 s


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(buf, "PNG")
    return buf.getvalue()


def test_fraction_keeps_the_top_share_with_stable_ties() -> None:
    scores = np.array([0.30, 0.10, 0.25, 0.25, np.nan, 0.05, 0.25])
    verdict = clip_score_filter(scores, fraction=0.5, threshold=None)
    # 6 scored rows -> keep 3: 0.30 and the first two of the tied 0.25s (positions 2, 3)
    assert verdict["reason"].tolist() == [
        None, "low_clip_score", None, None, None, "low_clip_score", "low_clip_score",
    ]  # fmt: skip
    assert "cut 0.2500" in verdict["detail"][6] and "score 0.2500" in verdict["detail"][6]
    assert clip_score_filter(scores, fraction=1.0, threshold=None)["reason"].isna().all()


def test_threshold_keeps_scores_at_or_above() -> None:
    scores = np.array([0.28, 0.279, np.nan, 0.5])
    verdict = clip_score_filter(scores, fraction=None, threshold=0.28)
    assert verdict["reason"].tolist() == [None, "low_clip_score", None, None]
    assert "0.2790 < threshold 0.2800" in verdict["detail"][1]
    assert set(verdict["reason"].dropna()) <= set(CLIP_SCORE_REASONS)


def test_filter_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        clip_score_filter(np.zeros(3), fraction=0.3, threshold=0.2)
    with pytest.raises(ValueError, match="exactly one"):
        clip_score_filter(np.zeros(3), fraction=None, threshold=None)
    with pytest.raises(ValueError, match="fraction"):
        clip_score_filter(np.zeros(3), fraction=0.0, threshold=None)


def test_clip_scores_are_row_cosines() -> None:
    a = np.array([[1.0, 0.0], [3.0, 4.0], [np.nan, np.nan]])
    b = np.array([[0.0, 2.0], [3.0, 4.0], [1.0, 0.0]])
    out = clip_scores(a, b)
    assert out[:2] == pytest.approx([0.0, 1.0])
    assert np.isnan(out[2])


def test_model_folder_and_production_alias_load_the_same_model(tmp_path) -> None:
    loaded = create_model(MODEL)
    folder = tmp_path / "models" / "teacher"
    card = save_model(loaded.model, MODEL, loaded.model_cfg, folder, {"stage": "teacher"})
    url = "sqlite:///store/registry.db"

    with pytest.raises(StageError, match="nothing is registered yet"):
        load_scoring_model("production", tmp_path, url)
    registry = Registry(f"sqlite:///{tmp_path / 'store' / 'registry.db'}")
    record = registry.register_model(
        "clipops-clip",
        stage="teacher",
        open_clip_name=MODEL,
        model_cfg=loaded.model_cfg,
        preprocess_cfg=loaded.preprocess_cfg,
        weights_sha256=card["weights_sha256"],
        model_dir=folder,
    )
    with pytest.raises(StageError, match="no model .* has a production alias"):
        load_scoring_model("production", tmp_path, url)
    registry.set_alias("clipops-clip", "production", record.version)
    registry.close()
    with pytest.raises(StageError, match="is not a folder"):
        load_scoring_model("models/nowhere", tmp_path, url)

    images = [_png((200, 30, 30)), None, _png((30, 30, 200))]
    captions = ["a red square", "a caption without image", "a red square"]
    by_folder = load_scoring_model("models/teacher", tmp_path, url)
    by_alias = load_scoring_model("production", tmp_path, url)
    by_name = load_scoring_model("production:clipops-clip", tmp_path, url)
    img_f, txt_f = embed_pool(by_folder, images, captions, batch_size=2)
    for other in (by_alias, by_name):
        img_o, txt_o = embed_pool(other, images, captions, batch_size=2)
        np.testing.assert_allclose(img_o, img_f, atol=1e-5)
        np.testing.assert_allclose(txt_o, txt_f, atol=1e-5)

    # NaN image row for the text-only pair; unit rows; equal to the encoders called directly
    assert np.isnan(img_f[1]).all() and not np.isnan(txt_f).any()
    np.testing.assert_allclose(np.linalg.norm(img_f[[0, 2]], axis=1), 1.0, atol=1e-5)
    direct = encode_images(by_folder, [images[0], images[2]])
    np.testing.assert_allclose(img_f[[0, 2]], direct, atol=1e-5)
    np.testing.assert_allclose(txt_f[0], encode_texts(by_folder, [captions[0]])[0], atol=1e-5)
    np.testing.assert_allclose(txt_f[0], txt_f[2])
    scores = clip_scores(img_f, txt_f)
    assert np.isnan(scores[1])
    np.testing.assert_allclose(scores[[0, 2]], (img_f[[0, 2]] * txt_f[[0, 2]]).sum(1), atol=1e-5)
    verdict = clip_score_filter(scores, fraction=0.5, threshold=None)
    assert verdict["reason"].notna().sum() == 1 and verdict["reason"][1] is None
