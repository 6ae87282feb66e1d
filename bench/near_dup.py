"""Near-duplicate images: quality on the bundled shapes pool, speed of the band search.

1. Shapes pool (tasks.sources.shapes, which injects exact and near copies with known ids):
   for max_distance 0..10, the recall of injected near copies and the number of rows of
   *distinct* scenes wrongly flagged, with pHash alone and with the thumbnail check.
2. Search speed on random 64-bit hashes: the band search against brute force (all pairs)
   on the same hashes (identical pairs, time ratio), then the band search alone on 1M
   hashes (time, peak traced memory).

Run: `.venv/bin/python -m bench.near_dup [--quick]`; writes reports/bench/near_dup.json.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np

from tasks.curation.image_hash import image_signatures, phash64
from tasks.curation.near_dup import (
    DEFAULT_MAX_DISTANCE,
    DEFAULT_MAX_THUMB_DISTANCE,
    brute_force_pairs,
    hamming_pairs,
    near_duplicates,
    plan_bands,
)
from tasks.params import ShapesSource
from tasks.sources.shapes import generate_shape_pairs

OUT = Path("reports/bench/near_dup.json")


def shapes_quality(num_pairs: int, distances: range) -> dict:
    """Recall of injected near copies and false flags, per max_distance, on the shapes pool."""
    source = ShapesSource(num_pairs=num_pairs, near_duplicates=max(10, num_pairs // 50))
    result = generate_shape_pairs(source, seed=0, max_side=128)
    rows = result.pairs
    ids = [r["id"] for r in rows]
    position = {row_id: k for k, row_id in enumerate(ids)}
    group = np.arange(len(rows))  # injected copies share their original's group
    dups = result.extra["duplicates"]
    for copy_id, orig_id in [*dups["near"].items(), *dups["exact"].items()]:
        group[position[copy_id]] = position[orig_id]
    near_rows = np.array([position[c] for c in dups["near"]])
    captions = np.array([r["caption"] for r in rows], dtype=object)

    start = time.perf_counter()
    sig = image_signatures([r["image"] for r in rows])
    signature_ms = (time.perf_counter() - start) / len(rows) * 1e3
    start = time.perf_counter()
    for r in rows[:500]:
        phash64(r["image"])
    phash_ms = (time.perf_counter() - start) / min(500, len(rows)) * 1e3

    table = []
    for d in distances:
        for confirm in (False, True):
            out = near_duplicates(
                ids,
                sig.phash,
                d,
                thumbnails=sig.thumbnail if confirm else None,
                max_thumb_distance=DEFAULT_MAX_THUMB_DISTANCE,
            )
            flagged = out["duplicate"].to_numpy()
            kept_pos = np.array([position.get(k, -1) for k in out["kept_id"].fillna("")])
            right = flagged & (kept_pos >= 0) & (group[np.maximum(kept_pos, 0)] == group)
            wrong = flagged & ~right
            same_caption = wrong & (captions[np.maximum(kept_pos, 0)] == captions)
            table.append(
                {
                    "max_distance": d,
                    "thumbnail_check": confirm,
                    "near_flagged": float(flagged[near_rows].mean()),
                    "near_recall": float(right[near_rows].mean()),  # kept id = its original
                    "distinct_rows_flagged": int(wrong.sum()),
                    "of_which_same_caption": int(same_caption.sum()),
                    "rows": len(rows),
                }
            )
    return {
        "rows": len(rows),
        "injected_near": len(dups["near"]),
        "injected_exact": len(dups["exact"]),
        "phash64_ms_per_image": round(phash_ms, 3),
        "signatures_ms_per_image": round(signature_ms, 3),
        "table": table,
    }


def search_speed(n_compare: int, n_large: int, distances: list[int]) -> dict:
    rng = np.random.default_rng(0)
    out: dict = {"compare": [], "large": []}
    hashes = rng.integers(0, np.iinfo(np.uint64).max, size=n_compare, dtype=np.uint64)
    for d in distances:
        t0 = time.perf_counter()
        ours = hamming_pairs(hashes, hashes, d, self_join=True)
        t1 = time.perf_counter()
        brute = brute_force_pairs(hashes, hashes, d, self_join=True)
        t2 = time.perf_counter()
        same = all(np.array_equal(a, b) for a, b in zip(ours, brute, strict=True))
        out["compare"].append(
            {
                "n": n_compare,
                "max_distance": d,
                "bands_radius": plan_bands(n_compare, n_compare, d),
                "banded_s": round(t1 - t0, 3),
                "brute_force_s": round(t2 - t1, 3),
                "speedup": round((t2 - t1) / max(t1 - t0, 1e-9), 1),
                "pairs": len(ours[0]),
                "identical": same,
            }
        )
    big = rng.integers(0, np.iinfo(np.uint64).max, size=n_large, dtype=np.uint64)
    ids = [f"pool/{i:08d}" for i in range(n_large)]
    for d in distances:
        tracemalloc.start()
        t0 = time.perf_counter()
        result = near_duplicates(ids, big, d)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out["large"].append(
            {
                "n": n_large,
                "max_distance": d,
                "bands_radius": plan_bands(n_large, n_large, d),
                "seconds": round(elapsed, 2),
                "peak_traced_mb": round(peak / 2**20, 1),
                "duplicates": int(result["duplicate"].sum()),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = parser.parse_args()
    num_pairs, n_compare, n_large = (300, 2000, 20_000) if args.quick else (2000, 20_000, 10**6)
    report = {
        "defaults": {
            "max_distance": DEFAULT_MAX_DISTANCE,
            "max_thumb_distance": DEFAULT_MAX_THUMB_DISTANCE,
        },
        "shapes": shapes_quality(num_pairs, range(0, 11)),
        "search": search_speed(n_compare, n_large, [DEFAULT_MAX_DISTANCE, 6]),
    }
    print(f"shapes pool: {report['shapes']['rows']} rows, "
          f"{report['shapes']['injected_near']} injected near copies; "
          f"phash64 {report['shapes']['phash64_ms_per_image']} ms/img")  # fmt: skip
    print("d  thumb  near_flagged near_recall  distinct_flagged (same caption)")
    for row in report["shapes"]["table"]:
        keys = ["max_distance", "thumbnail_check", "near_flagged", "near_recall",
                "distinct_rows_flagged", "of_which_same_caption"]  # fmt: skip
        cells = [row[k] for k in keys]
        print("{:<2} {!s:6} {:.3f}        {:.3f}        {:>6} ({})".format(*cells))
    for row in report["search"]["compare"]:
        print(f"n={row['n']} d={row['max_distance']} banded {row['banded_s']}s vs all pairs "
              f"{row['brute_force_s']}s: {row['speedup']}x, "
              f"identical={row['identical']}")  # fmt: skip
    for row in report["search"]["large"]:
        print(f"n={row['n']} d={row['max_distance']} {row['bands_radius']}: {row['seconds']}s, "
              f"peak {row['peak_traced_mb']} MB")  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
