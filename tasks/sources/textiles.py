"""conformal-clip-data's 2,000 simulated textile JPEGs: nominal, local defect, global defect.

Every caption contains its label string, so class-name metadata (curation) and zero-shot
prompts built from the labels match the captions.
"""

from __future__ import annotations

from pathlib import Path

import conformal_clip_data
from tqdm import tqdm

from tasks.errors import StageError
from tasks.params import TextilesSource
from tasks.sources.image_checks import ImageRejected, read_image_file, store_encoded
from tasks.sources.records import (
    SourceResult,
    pair_row,
    quarantine_row,
    source_rng,
    stratified_cap,
    stratified_holdout,
)

SOURCE = "textiles"
CAPTIONS: dict[str, tuple[str, ...]] = {
    "nominal": (
        "a photo of nominal fabric.",
        "a close-up of nominal textile with an even weave.",
        "a nominal piece of woven fabric without flaws.",
        "a scan of nominal cloth.",
    ),
    "local defect": (
        "a photo of fabric with a local defect.",
        "a close-up of textile showing a local defect.",
        "woven cloth with a small local defect in one spot.",
        "a scan of fabric with a local defect.",
    ),
    "global defect": (
        "a photo of fabric with a global defect.",
        "a close-up of textile with a global defect across the weave.",
        "woven cloth with a global defect over the whole surface.",
        "a scan of fabric with a global defect.",
    ),
}


def textile_files() -> list[tuple[Path, str]]:
    """Every bundled textile image with its label, in a fixed (label, file name) order."""
    dirs = {
        "nominal": conformal_clip_data.nominal_dir(),
        "local defect": conformal_clip_data.local_dir(),
        "global defect": conformal_clip_data.global_dir(),
    }
    files: list[tuple[Path, str]] = []
    for label, folder in dirs.items():
        folder = Path(folder)
        if not folder.is_dir():
            raise StageError(
                f"textile folder {folder} is missing: reinstall conformal-clip-data "
                "or set ingest.textiles.enabled: false"
            )
        files += [(p, label) for p in sorted(folder.glob("*.jpg"))]
    return files


def load_textile_pairs(
    params: TextilesSource, seed: int, *, min_side: int, max_side: int, max_bytes: int
) -> SourceResult:
    """Textile pairs: an optional stratified cap, then a stratified seeded hold-out."""
    files = textile_files()
    rng = source_rng(seed, SOURCE)
    labels = [label for _, label in files]
    if params.max_images is not None:
        keep = stratified_cap(labels, params.max_images, rng)
        files = [files[i] for i in keep]
        labels = [labels[i] for i in keep]
    is_eval = stratified_holdout(labels, params.heldout_fraction, rng)
    picks = rng.integers(1 << 30, size=len(files))
    result = SourceResult(SOURCE)
    for i, (path, label) in enumerate(tqdm(files, desc="ingest textiles", unit="img")):
        result.rows_in += 1
        kind = label.split()[0]  # nominal | local | global: keeps ids short
        row_id = f"textiles-{kind}-{path.stem.removeprefix('textile_')}"
        try:
            stored = store_encoded(
                read_image_file(path, max_bytes), min_side=min_side, max_side=max_side
            )
        except ImageRejected as exc:
            result.quarantine.append(
                quarantine_row(f"{kind}/{path.name}", SOURCE, exc.reason, exc.detail)
            )
            continue
        templates = CAPTIONS[label]
        caption = templates[picks[i] % len(templates)]
        split = "eval" if is_eval[i] else "train"
        result.pairs.append(pair_row(row_id, stored, caption, SOURCE, label, split))
    return result
