"""Near-duplicate images: the band search equals all pairs, real near copies are found, the
bundled shapes pool's injected copies are found without flagging distinct scenes."""

import io

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageEnhance
from sklearn.datasets import load_sample_images

from tasks.curation.image_hash import image_signatures, phash64, phash_many
from tasks.curation.near_dup import (
    DEFAULT_MAX_DISTANCE,
    NEAR_DUP_REASONS,
    brute_force_pairs,
    eval_near_copy_verdict,
    hamming_pairs,
    near_copies,
    near_duplicate_verdict,
    near_duplicates,
)
from tasks.errors import StageError
from tasks.params import ShapesSource
from tasks.sources.shapes import generate_shape_pairs
from tasks.sources.textiles import textile_files


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _crop(img: Image.Image, share: float) -> Image.Image:
    dx, dy = int(img.width * share), int(img.height * share)
    return img.crop((dx, dy, img.width - dx, img.height - dy)).resize(img.size)


@st.composite
def _hash_sets(draw):
    """Random hashes plus planted near copies (a few flipped bits), so pairs exist."""
    n = draw(st.integers(0, 60))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    base = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    copies = base[: n // 2].copy()
    for k in range(len(copies)):
        for bit in rng.choice(64, size=int(rng.integers(0, 12)), replace=False):
            copies[k] ^= np.uint64(1) << np.uint64(bit)
    return np.concatenate([base, copies, base[:2]])  # and some exact repeats


@settings(max_examples=60, deadline=None)
@given(hashes=_hash_sets(), max_distance=st.integers(0, 14), split=st.integers(0, 40))
def test_band_search_equals_all_pairs(hashes, max_distance, split) -> None:
    ours = hamming_pairs(hashes, hashes, max_distance, self_join=True)
    brute = brute_force_pairs(hashes, hashes, max_distance, self_join=True)
    assert all(np.array_equal(a, b) for a, b in zip(ours, brute, strict=True))
    query, index = hashes[:split], hashes[split:]
    ours = hamming_pairs(query, index, max_distance, self_join=False)
    brute = brute_force_pairs(query, index, max_distance, self_join=False)
    assert all(np.array_equal(a, b) for a, b in zip(ours, brute, strict=True))


@settings(max_examples=40, deadline=None)
@given(hashes=_hash_sets(), max_distance=st.integers(0, 12))
def test_groups_keep_their_smallest_id(hashes, max_distance) -> None:
    n = len(hashes)
    ids = [f"id{k:03d}" for k in np.random.default_rng(n).permutation(n)]
    out = near_duplicates(ids, hashes, max_distance)
    # brute-force groups by union-find over all close pairs
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, _ in zip(*brute_force_pairs(hashes, hashes, max_distance, True), strict=True):
        parent[find(a)] = find(b)
    for k in range(n):
        members = [j for j in range(n) if find(j) == find(k)]
        smallest = min(ids[j] for j in members)
        assert out["duplicate"][k] == (ids[k] != smallest)
        assert out["kept_id"][k] == (None if ids[k] == smallest else smallest)


def test_rows_without_image_are_skipped_and_bad_bytes_are_clear() -> None:
    png = _encode(Image.new("RGB", (16, 16), (200, 10, 10)))
    hashes, has_image = phash_many([png, None, png])
    assert has_image.tolist() == [True, False, True]
    assert hashes[0] == hashes[2] == phash64(png)
    out = near_duplicates(["a", "b", "c"], hashes, 0, has_hash=has_image)
    assert out["duplicate"].tolist() == [False, False, True]
    assert out["kept_id"].tolist() == [None, None, "a"]
    with pytest.raises(StageError, match="row x2"):
        phash_many([png, b"not an image"], ids=["x1", "x2"])
    with pytest.raises(ValueError, match="unique"):
        near_duplicates(["a", "a"], hashes[:2], 0)


def test_reason_codes_only_on_built_duplicates() -> None:
    photo = Image.fromarray(load_sample_images().images[0])
    other = Image.fromarray(load_sample_images().images[1])
    images = [_encode(photo), _encode(photo, "JPEG", quality=70), _encode(other)]
    sig = image_signatures(images)
    ids = ["p1", "p2", "q1"]
    out = near_duplicates(ids, sig.phash, DEFAULT_MAX_DISTANCE, thumbnails=sig.thumbnail)
    verdict = near_duplicate_verdict(out, pd.Index([7, 8, 9]))
    assert verdict["reason"].tolist() == [None, "near_duplicate", None]
    assert "p1" in verdict.loc[8, "detail"]
    copies = near_copies(sig.phash[1:], sig.phash[:1], ["eval-1"], DEFAULT_MAX_DISTANCE)
    verdict = eval_near_copy_verdict(copies, pd.Index(["p2", "q1"]))
    assert verdict["reason"].tolist() == ["eval_near_copy", None]
    assert "eval-1" in verdict.loc["p2", "detail"]
    assert set(NEAR_DUP_REASONS) == {"near_duplicate", "eval_near_copy"}


def test_near_copies_of_real_eval_images_are_found() -> None:
    photos = [Image.fromarray(a).reduce(2) for a in load_sample_images().images]
    textiles = [Image.open(p).convert("RGB") for p, _ in textile_files()[:600:100]]
    eval_images = photos + textiles
    reference = image_signatures([_encode(img) for img in eval_images])
    edits = [
        lambda img: _encode(img, "JPEG", quality=60),
        lambda img: _encode(ImageEnhance.Brightness(img).enhance(1.1)),
        lambda img: _encode(_crop(img, 0.01)),
    ]
    # photos take every edit; textures (fabric) only re-encoding and brightness, since a
    # crop shifts a fine weave by whole periods and its pHash moves ~10 bits
    copies = [edit(img) for img in photos for edit in edits]
    copies += [edit(img) for img in textiles for edit in edits[:2]]
    expected = [f"e{k}" for k in range(len(photos)) for _ in edits]
    expected += [f"e{len(photos) + k}" for k in range(len(textiles)) for _ in edits[:2]]
    query = image_signatures(copies + [_encode(img.transpose(Image.Transpose.ROTATE_90))
                                       for img in eval_images])  # fmt: skip
    found = near_copies(
        query.phash,
        reference.phash,
        [f"e{k}" for k in range(len(eval_images))],
        DEFAULT_MAX_DISTANCE,
        query_thumbnails=query.thumbnail,
        reference_thumbnails=reference.thumbnail,
    )
    assert found["reference_id"].tolist()[: len(copies)] == expected
    assert not found["copy"].iloc[len(copies) :].any(), "rotated (different) images flagged"


def test_shapes_pool_injected_copies_found_without_flagging_distinct_scenes() -> None:
    result = generate_shape_pairs(
        ShapesSource(num_pairs=400, exact_duplicates=8, near_duplicates=12), seed=1, max_side=128
    )
    rows = result.pairs
    ids = [r["id"] for r in rows]
    sig = image_signatures([r["image"] for r in rows], ids)
    out = near_duplicates(ids, sig.phash, DEFAULT_MAX_DISTANCE, thumbnails=sig.thumbnail)
    injected = {**result.extra["duplicates"]["near"], **result.extra["duplicates"]["exact"]}
    is_dup = out["duplicate"].to_numpy()
    flagged = dict(zip(np.array(ids)[is_dup], out["kept_id"][is_dup], strict=True))
    assert flagged == injected
    # pHash alone merges distinct drawings: the reason the thumbnail check exists
    alone = near_duplicates(ids, sig.phash, DEFAULT_MAX_DISTANCE)
    assert alone["duplicate"].sum() > len(injected)
