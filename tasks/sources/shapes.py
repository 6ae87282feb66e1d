"""The generated compositional set: exact captions, a unique-caption eval split and injected
duplicates whose ids are reported, so curation can be tested against known answers."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from tqdm import tqdm

from tasks.errors import StageError
from tasks.params import ShapesSource
from tasks.sources.image_checks import StoredImage, encode_image, store_image
from tasks.sources.records import SourceResult, pair_row, source_rng
from tasks.sources.shape_scenes import Scene, draw_scene, sample_scene

SOURCE = "shapes"
_MAX_RESAMPLES = 10_000  # eval captions must be unique; give up (clearly) if the space runs dry


def _unique_render(
    scene: Scene, size: int, max_side: int, rng: np.random.Generator, seen: set[str]
) -> StoredImage:
    """Render until the bytes are new: an accidental copy would look like an injected duplicate."""
    for _ in range(100):
        stored = store_image(draw_scene(scene, size, rng), max_side)
        if stored.sha256 not in seen:
            seen.add(stored.sha256)
            return stored
    raise StageError(f"could not render a distinct image of {scene.caption()!r} in 100 tries")


def near_copy(data: bytes, variant: int, rng: np.random.Generator) -> StoredImage:
    """A perceptually identical copy with different bytes, in one of three kinds by `variant`.

    0: re-encoded as JPEG (compression artefacts); 1: a seeded uniform brightness shift of
    2-4 levels; 2: a slight blur (downscale to ~92% and back). Per-pixel noise was measured
    and rejected: on these flat images it moved perceptual hashes as far as distinct scenes.
    """
    img = Image.open(io.BytesIO(data)).convert("RGB")
    kind = variant % 3
    if kind == 0:
        return encode_image(img, "JPEG")
    if kind == 1:
        delta = int(rng.integers(2, 5)) * (1 if rng.random() < 0.5 else -1)
        pixels = np.asarray(img, dtype=np.int16) + delta
        return encode_image(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    small = (max(1, round(img.width * 0.92)), max(1, round(img.height * 0.92)))
    blurred = img.resize(small, Image.Resampling.BICUBIC).resize(img.size, Image.Resampling.BICUBIC)
    return encode_image(blurred)


def _pick_originals(train_idx: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of the train rows to copy."""
    if n == 0 or len(train_idx) == 0:
        if n:
            raise StageError("shapes: no train rows to copy; lower ingest.shapes.heldout_fraction")
        return np.array([], dtype=int)
    # With replacement only when asked for more copies than there are train rows.
    return np.sort(rng.choice(train_idx, size=n, replace=n > len(train_idx)))


def generate_shape_pairs(params: ShapesSource, seed: int, max_side: int) -> SourceResult:
    """`num_pairs` scenes plus `exact_duplicates` and `near_duplicates` injected train copies.

    Eval rows (a seeded `heldout_fraction`) are resampled until their scene, and so their
    caption, is unique within the eval split. Duplicate ids map to their original's id in
    `result.extra["duplicates"]`.
    """
    rng = source_rng(seed, SOURCE)
    n = params.num_pairs
    is_eval = np.zeros(n, dtype=bool)
    is_eval[rng.permutation(n)[: round(params.heldout_fraction * n)]] = True
    result = SourceResult(SOURCE)
    seen_bytes: set[str] = set()
    eval_captions: set[str] = set()
    for i in tqdm(range(n), desc="ingest shapes", unit="img"):
        result.rows_in += 1
        scene = sample_scene(rng)
        if is_eval[i]:
            for _ in range(_MAX_RESAMPLES):
                if scene.caption() not in eval_captions:
                    break
                scene = sample_scene(rng)
            else:
                raise StageError(
                    f"shapes: no unique eval caption after {_MAX_RESAMPLES} draws; "
                    "lower ingest.shapes.num_pairs or heldout_fraction"
                )
            eval_captions.add(scene.caption())
        stored = _unique_render(scene, params.image_size, max_side, rng, seen_bytes)
        split = "eval" if is_eval[i] else "train"
        row = pair_row(f"shapes-{i:06d}", stored, scene.caption(), SOURCE, None, split)
        result.pairs.append(row)

    train_idx = np.flatnonzero(~is_eval)
    originals = result.pairs[:]  # copies are made of base scenes only, never of copies
    exact: dict[str, str] = {}
    for k, src in enumerate(_pick_originals(train_idx, params.exact_duplicates, rng)):
        result.rows_in += 1
        orig = originals[src]
        copy = dict(orig, id=f"shapes-exactdup-{k:05d}")
        result.pairs.append(copy)
        exact[copy["id"]] = orig["id"]
    near: dict[str, str] = {}
    for k, src in enumerate(_pick_originals(train_idx, params.near_duplicates, rng)):
        result.rows_in += 1
        orig = originals[src]
        stored = near_copy(orig["image"], k, rng)
        dup_id = f"shapes-neardup-{k:05d}"
        result.pairs.append(pair_row(dup_id, stored, orig["caption"], SOURCE, None, "train"))
        near[dup_id] = orig["id"]
    result.extra["duplicates"] = {"exact": exact, "near": near}
    return result
