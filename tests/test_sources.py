"""The bundled sources and the image checks, on the real data and real image bytes."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from tasks.params import DigitsSource, ShapesSource, TextilesSource
from tasks.sources import (
    DIGIT_CLASS_NAMES,
    SourceResult,
    generate_shape_pairs,
    load_digit_pairs,
    load_textile_pairs,
)
from tasks.sources.captions_file import printable
from tasks.sources.image_checks import (
    ImageRejected,
    fit_within,
    sha256_hex,
    store_encoded,
)
from tasks.sources.records import stratified_cap, stratified_holdout
from tasks.sources.shape_scenes import COLOURS, Scene, SceneObject, draw_scene, sample_scene
from tasks.sources.textiles import textile_files


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# ---------------------------------------------------------------- image checks


def test_fit_within_keeps_aspect_and_never_upscales() -> None:
    assert fit_within(300, 150, 128) == (128, 64)
    assert fit_within(150, 300, 128) == (64, 128)
    assert fit_within(100, 40, 128) == (100, 40)
    assert fit_within(4000, 10, 128) == (128, 1)  # a side never reaches zero


def test_store_encoded_downscales_to_png_and_hashes_stored_bytes() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (150, 300, 3), dtype=np.uint8))
    stored = store_encoded(_png(img), min_side=8, max_side=128)
    assert (stored.width, stored.height, stored.format) == (128, 64, "PNG")
    assert stored.sha256 == sha256_hex(stored.data)
    decoded = _decode(stored.data)
    assert decoded.format == "PNG" and decoded.mode == "RGB" and decoded.size == (128, 64)


def test_store_encoded_keeps_small_rgb_jpeg_bytes_and_converts_others() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    kept = store_encoded(jpeg, min_side=8, max_side=128)
    assert kept.data == jpeg and kept.format == "JPEG" and (kept.width, kept.height) == (40, 30)

    grey = store_encoded(_png(Image.new("L", (20, 20), 128)), min_side=8, max_side=128)
    assert _decode(grey.data).mode == "RGB"
    # 16-bit greyscale is scaled into 8 bits, not clipped to white.
    deep = Image.fromarray(np.full((20, 20), 32768, dtype=np.uint16))
    deep_stored = _decode(store_encoded(_png(deep), min_side=8, max_side=128).data)
    assert deep_stored.getpixel((3, 3)) == (128, 128, 128)
    # Transparent pixels are composited on white, not left to turn black.
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    flat = _decode(store_encoded(_png(rgba), min_side=8, max_side=128).data)
    assert flat.getpixel((5, 5)) == (255, 255, 255)


def test_decode_checks_catch_truncation_garbage_and_small_images() -> None:
    rng = np.random.default_rng(1)
    png = _png(Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    cases = {
        "truncated png": (png[: len(png) // 2], "image_undecodable"),
        "truncated jpeg": (jpeg[: len(jpeg) // 2], "image_undecodable"),
        "garbage": (b"this is not an image at all" * 10, "image_undecodable"),
        "empty": (b"", "image_empty"),
        "too small": (_png(Image.new("RGB", (4, 30))), "image_too_small"),
    }
    for name, (data, reason) in cases.items():
        with pytest.raises(ImageRejected) as info:
            store_encoded(data, min_side=8, max_side=128)
        assert info.value.reason == reason, name


def test_printable_escapes_undecodable_bytes() -> None:
    text = b"caf\xe9 ok".decode("utf-8", "surrogateescape")
    assert printable(text) == "caf\\xe9 ok"
    assert printable("plain") == "plain"


# ---------------------------------------------------------------- splits


def test_stratified_holdout_takes_the_fraction_of_every_class() -> None:
    labels = ["a"] * 100 + ["b"] * 50 + ["c"] * 10
    mask = stratified_holdout(labels, 0.3, np.random.default_rng(0))
    held = Counter(label for label, m in zip(labels, mask, strict=True) if m)
    assert held == {"a": 30, "b": 15, "c": 3}
    again = stratified_holdout(labels, 0.3, np.random.default_rng(0))
    assert (mask == again).all()
    assert not (mask == stratified_holdout(labels, 0.3, np.random.default_rng(1))).all()


def test_stratified_cap_keeps_class_shares_and_exact_total() -> None:
    labels = ["n"] * 1000 + ["l"] * 500 + ["g"] * 500
    keep = stratified_cap(labels, 31, np.random.default_rng(0))
    assert len(keep) == 31 and len(set(keep)) == 31
    counts = Counter(labels[i] for i in keep)
    assert counts["n"] in (15, 16) and counts["l"] in (7, 8) and counts["g"] in (7, 8)


# ---------------------------------------------------------------- digits


DIGITS = DigitsSource(image_size=24)


@pytest.fixture(scope="module")
def digits_result() -> SourceResult:
    """All 1,797 digits once per module (each load decodes and encodes every image)."""
    return load_digit_pairs(DIGITS, seed=0, max_side=128)


def test_digits_are_all_real_images_with_exact_class_names(digits_result: SourceResult) -> None:
    params, result = DIGITS, digits_result
    pairs = result.pairs
    assert len(pairs) == result.rows_in == 1797 and not result.quarantine
    assert {p["label"] for p in pairs} == set(DIGIT_CLASS_NAMES)
    assert {(p["width"], p["height"]) for p in pairs} == {(24, 24)}
    for p in pairs:
        assert p["label"] in p["caption"]
        templates = params.eval_templates if p["split"] == "eval" else params.train_templates
        assert p["caption"] in {t.format(p["label"]) for t in templates}
    per_class = Counter((p["label"], p["split"]) for p in pairs)
    for name in DIGIT_CLASS_NAMES:
        share = per_class[(name, "eval")] / (per_class[(name, "eval")] + per_class[(name, "train")])
        assert abs(share - params.heldout_fraction) < 0.01
    assert len({p["id"] for p in pairs}) == 1797


def test_digit_images_are_the_sklearn_strokes_white_on_black(digits_result: SourceResult) -> None:
    from sklearn.datasets import load_digits

    pairs = digits_result.pairs
    originals = load_digits().images
    for i in (0, 500, 1796):
        img = np.asarray(_decode(pairs[i]["image"]).convert("L").resize((8, 8), Image.BOX))
        corr = np.corrcoef(img.ravel().astype(float), originals[i].ravel())[0, 1]
        assert corr > 0.9, (i, corr)


# ---------------------------------------------------------------- textiles


def test_textiles_cap_is_stratified_and_captions_name_the_label() -> None:
    result = load_textile_pairs(
        TextilesSource(max_images=40), seed=0, min_side=8, max_side=128, max_bytes=10**7
    )
    pairs = result.pairs
    assert len(pairs) == result.rows_in == 40 and not result.quarantine
    counts = Counter(p["label"] for p in pairs)
    assert counts == {"nominal": 20, "local defect": 10, "global defect": 10}
    assert all(p["label"] in p["caption"] for p in pairs)
    assert Counter(p["split"] for p in pairs) == {"train": 28, "eval": 12}
    # 250 px JPEGs are downscaled to max_image_side and stay JPEG.
    assert {(p["width"], p["height"]) for p in pairs} == {(128, 128)}
    assert all(_decode(p["image"]).format == "JPEG" for p in pairs)


def test_textiles_small_enough_jpegs_are_stored_byte_for_byte() -> None:
    result = load_textile_pairs(
        TextilesSource(max_images=6), seed=3, min_side=8, max_side=256, max_bytes=10**7
    )
    by_name = {
        f"textiles-{label.split()[0]}-{path.stem.removeprefix('textile_')}": path
        for path, label in textile_files()
    }
    for p in result.pairs:
        assert p["image"] == by_name[p["id"]].read_bytes()
        assert (p["width"], p["height"]) == (250, 250)


# ---------------------------------------------------------------- shapes


def test_sample_scene_uses_distinct_cells_and_canonical_order() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = sample_scene(rng)
        cells = [o.position for o in scene.objects]
        assert 1 <= len(cells) <= 2 and cells == sorted(set(cells))


def test_drawn_scene_matches_its_caption() -> None:
    scene = Scene(
        (
            SceneObject(0, "circle", "red", "large"),
            SceneObject(8, "square", "blue", "large"),
        )
    )
    assert scene.caption() == (
        "a large red circle in the top left and a large blue square in the bottom right"
    )
    img = np.asarray(draw_scene(scene, 96, np.random.default_rng(0)), dtype=int)
    cell = 32

    def centre(row: int, col: int) -> np.ndarray:
        block = img[row * cell + 12 : row * cell + 20, col * cell + 12 : col * cell + 20]
        return block.reshape(-1, 3).mean(axis=0)

    assert np.abs(centre(0, 0) - COLOURS["red"]).max() < 30
    assert np.abs(centre(2, 2) - COLOURS["blue"]).max() < 30
    for empty in [(0, 2), (1, 1), (2, 0)]:  # background: dark grey, no object colour
        assert centre(*empty).max() < 80


def test_shapes_eval_captions_unique_and_duplicates_injected() -> None:
    params = ShapesSource(
        num_pairs=400, heldout_fraction=0.5, exact_duplicates=7, near_duplicates=6, image_size=32
    )
    result = generate_shape_pairs(params, seed=0, max_side=128)
    pairs = {p["id"]: p for p in result.pairs}
    assert len(pairs) == result.rows_in == 400 + 7 + 6
    base = [p for p in result.pairs if "dup" not in p["id"]]
    eval_caps = [p["caption"] for p in base if p["split"] == "eval"]
    train_caps = [p["caption"] for p in base if p["split"] == "train"]
    assert len(eval_caps) == 200 and len(set(eval_caps)) == 200
    # At this size random scenes do repeat (train shows it): the eval uniqueness is enforced.
    assert len(set(train_caps)) < len(train_caps)
    assert all(p["label"] is None for p in result.pairs)
    # Every base image is distinct; copies are exactly the injected ones.
    assert len({p["sha256"] for p in base}) == len(base)

    dups = result.extra["duplicates"]
    assert len(dups["exact"]) == 7 and len(dups["near"]) == 6
    for copy_id, orig_id in dups["exact"].items():
        copy, orig = pairs[copy_id], pairs[orig_id]
        assert copy["image"] == orig["image"] and copy["caption"] == orig["caption"]
        assert copy["split"] == orig["split"] == "train"
    for copy_id, orig_id in dups["near"].items():
        copy, orig = pairs[copy_id], pairs[orig_id]
        assert copy["sha256"] != orig["sha256"] and copy["caption"] == orig["caption"]
        assert copy["split"] == orig["split"] == "train"
        a = np.asarray(_decode(copy["image"]).convert("RGB"), dtype=float)
        b = np.asarray(_decode(orig["image"]).convert("RGB"), dtype=float)
        assert a.shape == b.shape and np.abs(a - b).mean() < 5, copy_id
        distance = imagehash.phash(Image.fromarray(a.astype(np.uint8))) - imagehash.phash(
            Image.fromarray(b.astype(np.uint8))
        )
        assert distance <= 8, (copy_id, distance)
    kinds = Counter(_decode(pairs[c]["image"]).format for c in dups["near"])
    assert kinds == {"JPEG": 2, "PNG": 4}  # re-encodes, brightness shifts and blurs


def test_shapes_are_seeded() -> None:
    params = ShapesSource(num_pairs=20, exact_duplicates=2, near_duplicates=2)
    a = generate_shape_pairs(params, seed=0, max_side=128).pairs
    b = generate_shape_pairs(params, seed=0, max_side=128).pairs
    c = generate_shape_pairs(params, seed=1, max_side=128).pairs
    assert [p["sha256"] for p in a] == [p["sha256"] for p in b]
    assert [p["caption"] for p in a] != [p["caption"] for p in c]


def test_textile_folders_exist() -> None:
    files = textile_files()
    assert len(files) == 2000 and all(Path(p).suffix == ".jpg" for p, _ in files)
