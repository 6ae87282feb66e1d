"""Read a pool shard by shard: tar shards and Parquet tables in, bounded PoolChunks out.

`iter_pool(inputs)` takes files and folders (a folder stands for its `*.tar`, `*.tar.gz`,
`*.tgz` and `*.parquet` files, sorted; an img2dataset sidecar `{shard}.parquet` beside
`{shard}.tar` is read with its tar, not as a table of its own) and yields `PoolChunk`s:
at most `chunk_rows` rows of one file in POOL_SCHEMA, with that file's quarantine rows.
Files are read one at a time and chunk by chunk, so memory is bounded by `chunk_rows`,
never by the pool, save for what finding repeated ids takes: a hash per Parquet row of the
pool (8 bytes) and the keys of the current tar shard.
`ShardWriter` writes the curated pool back as Parquet shards that `iter_pool` reads again.
See docs/pool_shards.md for the formats and the quarantine reason codes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from tasks.curation.parquet_reader import iter_parquet_table
from tasks.curation.pool_rows import PoolChunk, SeenIds
from tasks.curation.shard_writer import ShardWriter, read_manifest
from tasks.curation.tar_reader import TAR_SUFFIXES, iter_tar_shard, shard_stem, sidecar_path
from tasks.errors import StageError

__all__ = ["PoolChunk", "ShardWriter", "expand_inputs", "iter_pool", "read_manifest"]


def _is_tar(path: Path) -> bool:
    return path.name.endswith(TAR_SUFFIXES)


def _is_table(path: Path) -> bool:
    return path.suffix == ".parquet"


def expand_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """The pool's files in reading order: folders expanded (sorted), sidecars left out.

    Raises StageError for a missing input, a file that is neither a tar shard nor Parquet,
    a folder with no shards, or two files with the same stem (their ids would collide).
    """
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and (_is_tar(p) or _is_table(p))
            )
            if not found:
                raise StageError(
                    f"pool folder {path} holds no .tar, .tar.gz, .tgz or .parquet files: "
                    "point the pool input at a folder of shards"
                )
            files.extend(found)
        elif path.is_file():
            if not (_is_tar(path) or _is_table(path)):
                raise StageError(
                    f"pool input {path} is neither a tar shard (.tar, .tar.gz, .tgz) nor a "
                    "Parquet table (.parquet)"
                )
            files.append(path)
        else:
            raise StageError(f"pool input {path} does not exist: check the path")
    tars = {sidecar_path(p).resolve() for p in files if _is_tar(p)}
    files = [p for p in files if not (_is_table(p) and p.resolve() in tars)]
    by_stem: dict[str, Path] = {}
    for path in dict.fromkeys(files):  # the same file named twice is read once
        other = by_stem.setdefault(shard_stem(path), path)
        if other != path:
            raise StageError(
                f"pool inputs {other} and {path} share the name {shard_stem(path)!r}: ids are "
                "'<file stem>/<key>', so they would collide; rename one of them"
            )
    return list(by_stem.values())


def iter_pool(
    inputs: str | Path | Sequence[str | Path],
    *,
    chunk_rows: int = 1000,
    max_member_bytes: int = 20_000_000,
    source: str = "pool",
    split: str = "train",
    with_images: bool = True,
) -> Iterator[PoolChunk]:
    """Stream the pool in `inputs` as PoolChunks, one file at a time.

    Every sample ends as one row or one quarantine row (reason codes in
    tasks.pair_table.QUARANTINE_REASONS); a damaged file adds one row for what could not be
    read and never stops the pool. `with_images=False` leaves the image bytes out of the
    rows (tar members are still read to hash and check them; a Parquet image column is not
    read when sha256, width and height are columns of their own). `source` and `split` fill
    rows whose file does not say.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if max_member_bytes < 1:
        raise ValueError(f"max_member_bytes must be >= 1, got {max_member_bytes}")
    files = expand_inputs(inputs)
    options = dict(
        chunk_rows=chunk_rows,
        max_member_bytes=max_member_bytes,
        source=source,
        split=split,
        with_images=with_images,
    )
    seen_ids = SeenIds()  # ids of Parquet rows across the pool (8 bytes an id)
    for path in tqdm(files, desc="pool shards", unit="shard", disable=len(files) < 2):
        if _is_tar(path):
            yield from iter_tar_shard(path, **options)
        else:
            yield from iter_parquet_table(path, **options, seen_ids=seen_ids)
