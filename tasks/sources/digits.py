"""scikit-learn's 1,797 real 8x8 handwritten digits, upscaled to RGB and captioned from templates.

Labels are the class names "zero".."nine"; evaluation builds zero-shot prompts from
`eval_templates` x these names, so a label is exactly the word used in the captions.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from tqdm import tqdm

from tasks.params import DigitsSource
from tasks.sources.image_checks import store_image
from tasks.sources.records import SourceResult, pair_row, source_rng, stratified_holdout

SOURCE = "digits"
CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_image(pixels: np.ndarray, size: int) -> Image.Image:
    """An 8x8 array of 0..16 intensities as a `size` x `size` RGB image, white on black."""
    grey = np.clip(np.rint(pixels * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    # Bicubic smooths the 8x8 blocks into strokes; nearest would keep hard pixel edges.
    img = Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.BICUBIC)
    return img.convert("RGB")


def load_digit_pairs(params: DigitsSource, seed: int, max_side: int) -> SourceResult:
    """All 1,797 digits as pairs: a stratified, seeded `heldout_fraction` is split "eval"."""
    bunch = load_digits()
    labels = [CLASS_NAMES[t] for t in bunch.target]
    rng = source_rng(seed, SOURCE)
    is_eval = stratified_holdout(labels, params.heldout_fraction, rng)
    # Draw every template choice up front so the stream does not depend on loop details.
    train_pick = rng.integers(len(params.train_templates), size=len(labels))
    eval_pick = rng.integers(len(params.eval_templates), size=len(labels))
    result = SourceResult(SOURCE)
    for i in tqdm(range(len(labels)), desc="ingest digits", unit="img"):
        result.rows_in += 1
        label = labels[i]
        if is_eval[i]:
            caption = params.eval_templates[eval_pick[i]].format(label)
        else:
            caption = params.train_templates[train_pick[i]].format(label)
        stored = store_image(digit_image(bunch.images[i], params.image_size), max_side)
        split = "eval" if is_eval[i] else "train"
        result.pairs.append(pair_row(f"digits-{i:04d}", stored, caption, SOURCE, label, split))
    return result
