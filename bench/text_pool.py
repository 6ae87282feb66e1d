"""A generated text-only pool: caption rows as Parquet shards in the pool schema, streamed.

Rows follow tasks.curation.pool_schema.POOL_SCHEMA with the image fields null (a pool that
is "text and metadata only": what MetaCLIP matching and balancing run on before any image is
fetched), ids "<shard>/<n>", source "pool", split "train". Captions come from
bench.synthetic_text.CaptionGenerator: word frequencies follow English (Zipf), so entry
counts have a real head and tail. Memory holds one batch of rows, never the pool.

    .venv/bin/python -m bench.text_pool OUT_DIR --rows 1000000 --rows-per-shard 100000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/text_pool.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa
import pyarrow.parquet as pq

from bench.synthetic_text import CaptionGenerator
from tasks.curation.pool_schema import POOL_SCHEMA

BATCH_ROWS = 50_000  # rows generated and written at a time (one Parquet row group)


def _batch_table(shard: str, first: int, captions: list[str]) -> pa.Table:
    n = len(captions)
    columns = {
        "id": pa.array([f"{shard}/{first + i}" for i in range(n)], pa.string()),
        "caption": pa.array(captions, pa.string()),
        "source": pa.array(["pool"] * n, pa.string()),
        "split": pa.array(["train"] * n, pa.string()),
        "shard": pa.array([shard] * n, pa.string()),
    }
    return pa.Table.from_arrays(
        [columns.get(f.name, pa.nulls(n, f.type)) for f in POOL_SCHEMA], schema=POOL_SCHEMA
    )


def write_text_pool(
    out_dir: str | Path, num_rows: int, rows_per_shard: int = 100_000, seed: int = 0
) -> list[Path]:
    """Write `num_rows` caption rows as `pool-00000.parquet`, ... under `out_dir`.

    Returns the shard paths in order. The same arguments give the same files.
    """
    if num_rows < 0 or rows_per_shard < 1:
        raise ValueError(f"num_rows ({num_rows}) must be >= 0, rows_per_shard >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = CaptionGenerator(seed)
    paths: list[Path] = []
    for first_row in range(0, num_rows, rows_per_shard):
        shard = f"pool-{len(paths):05d}"
        path = out_dir / f"{shard}.parquet"
        shard_rows = min(rows_per_shard, num_rows - first_row)
        with pq.ParquetWriter(path, POOL_SCHEMA, compression="zstd") as writer:
            for start in range(0, shard_rows, BATCH_ROWS):
                captions = generator.batch(min(BATCH_ROWS, shard_rows - start))
                writer.write_table(_batch_table(shard, start, captions))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write a generated text-only caption pool")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rows-per-shard", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_text_pool(args.out_dir, args.rows, args.rows_per_shard, args.seed)
    print(f"wrote {args.rows:,} rows in {len(paths)} shards under {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
