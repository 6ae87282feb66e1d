"""Generate real pool shards for tests and benchmarks: webdataset tars, sidecars, hostile tars.

`write_tar_shards` writes img2dataset-style shards: consecutive `{key}.jpg|.png`,
`{key}.txt`, `{key}.json` members, images drawn with PIL (tasks.sources.shape_scenes, the
caption describes the drawn scene), and the `{shard}.parquet` sidecar with img2dataset's
columns. `write_caption_table` writes a caption-only Parquet pool of any size.
`write_hostile_tar` writes a small shard with one hostile sample of a given kind between
good ones (crafted with tarfile.TarInfo: `..` and absolute names, links, devices, FIFOs,
oversize members, cut and corrupt files, bad images and captions) and says what a reader
must report for it.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.sources.image_checks import encode_image
from tasks.sources.shape_scenes import COLOURS, POSITIONS, SHAPES, SIZES, draw_scene, sample_scene

SIDECAR_SCHEMA = pa.schema(
    [
        ("url", pa.string()),
        ("caption", pa.string()),
        ("key", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("original_width", pa.int64()),
        ("original_height", pa.int64()),
        ("sha256", pa.string()),
    ]
)
CAPTION_PLACES = ("txt", "json", "sidecar")


@dataclass(frozen=True)
class RenderedSample:
    caption: str
    image: bytes
    width: int
    height: int
    sha256: str


def render_samples(
    n: int,
    seed: int,
    *,
    image_size: int = 64,
    image_format: str = "JPEG",
    distinct_images: int | None = None,
) -> Iterator[RenderedSample]:
    """`n` (caption, image) pairs: shape scenes drawn with PIL, captioned by their content.

    `distinct_images` renders only that many and cycles them (fast bulk data for memory
    tests; ids stay distinct, images and captions repeat).
    """
    rng = np.random.default_rng(seed)
    cache: list[RenderedSample] = []
    for i in range(n):
        if distinct_images is not None and i >= distinct_images:
            yield cache[i % distinct_images]
            continue
        scene = sample_scene(rng)
        stored = encode_image(draw_scene(scene, image_size, rng), image_format)
        sample = RenderedSample(
            scene.caption(), stored.data, stored.width, stored.height, stored.sha256
        )
        if distinct_images is not None:
            cache.append(sample)
        yield sample


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # deterministic shards: same seed, same bytes
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _extension(image_format: str) -> str:
    return {"JPEG": "jpg", "PNG": "png"}[image_format]


def _metadata(key: str, sample: RenderedSample, url: str, with_caption: bool) -> dict:
    meta = {
        "url": url,
        "key": key,
        "status": "success",
        "error_message": None,
        "width": sample.width,
        "height": sample.height,
        "original_width": sample.width,
        "original_height": sample.height,
        "sha256": sample.sha256,
    }
    if with_caption:
        meta["caption"] = sample.caption
    return meta


def write_tar_shards(
    out_dir: str | Path,
    num_shards: int,
    samples_per_shard: int,
    seed: int,
    *,
    image_size: int = 64,
    image_format: str = "JPEG",
    sidecar: bool = True,
    caption_in: str = "txt",
    failed_per_shard: int = 0,
    distinct_images: int | None = None,
) -> list[Path]:
    """Write `num_shards` img2dataset-style shards `00000.tar`, ... (and sidecars); their paths.

    Keys are img2dataset's: shard number (5 digits) then index in the shard. `caption_in`
    says where each caption lives: "txt" (a `.txt` member and the json, as img2dataset
    does), "json" (json only) or "sidecar" (the Parquet sidecar only). `failed_per_shard`
    adds sidecar rows with status "failed_to_download" whose keys the tar does not hold.
    """
    if caption_in not in CAPTION_PLACES:
        raise ValueError(f"caption_in={caption_in!r}; expected one of {CAPTION_PLACES}")
    if caption_in == "sidecar" and not sidecar:
        raise ValueError("caption_in='sidecar' needs sidecar=True")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(samples_per_shard + failed_per_shard - 1)))
    samples = render_samples(
        num_shards * samples_per_shard,
        seed,
        image_size=image_size,
        image_format=image_format,
        distinct_images=distinct_images,
    )
    rng = np.random.default_rng(seed + 1)
    paths = []
    for shard in range(num_shards):
        total = samples_per_shard + failed_per_shard
        failed = set(rng.choice(total, size=failed_per_shard, replace=False).tolist())
        records: list[dict] = []
        path = out_dir / f"{shard:05d}.tar"
        with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
            for index in range(total):
                key = f"{shard:05d}{index:0{width}d}"
                url = f"https://example.com/{key}.{_extension(image_format)}"
                if index in failed:
                    records.append(
                        {"url": url, "key": key, "status": "failed_to_download"}
                        | {"error_message": "HTTP Error 404: Not Found"}
                    )
                    continue
                sample = next(samples)
                meta = _metadata(key, sample, url, with_caption=caption_in in ("txt", "json"))
                _add_member(tar, f"{key}.{_extension(image_format)}", sample.image)
                if caption_in == "txt":
                    _add_member(tar, f"{key}.txt", sample.caption.encode("utf-8"))
                _add_member(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
                records.append(meta | {"caption": sample.caption})
        if sidecar:
            columns = {name: [r.get(name) for r in records] for name in SIDECAR_SCHEMA.names}
            pq.write_table(pa.table(columns, schema=SIDECAR_SCHEMA), path.with_suffix(".parquet"))
        paths.append(path)
    return paths


def random_captions(n: int, seed: int) -> list[str]:
    """`n` shape-scene captions drawn with numpy (fast: a million in about a second)."""
    rng = np.random.default_rng(seed)
    colours = list(COLOURS)
    parts = [
        rng.integers(len(SIZES), size=n),
        rng.integers(len(colours), size=n),
        rng.integers(len(SHAPES), size=n),
        rng.integers(len(POSITIONS), size=n),
    ]
    return [
        f"a {SIZES[s]} {colours[c]} {SHAPES[h]} in the {POSITIONS[p]}"
        for s, c, h, p in zip(*(part.tolist() for part in parts), strict=True)
    ]


def write_caption_table(
    path: str | Path, num_rows: int, seed: int, *, row_group_rows: int = 100_000
) -> Path:
    """A caption-only Parquet pool (`key`, `caption`, `url`), written in row groups."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("key", pa.string()), ("caption", pa.string()), ("url", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, num_rows, row_group_rows):
            n = min(row_group_rows, num_rows - start)
            keys = [f"{i:09d}" for i in range(start, start + n)]
            table = pa.table(
                {
                    "key": keys,
                    "caption": random_captions(n, seed + start),
                    "url": [f"https://example.com/{k}.jpg" for k in keys],
                },
                schema=schema,
            )
            writer.write_table(table)
    return path


# kind -> the reason code a reader must report for the hostile sample.
HOSTILE_KINDS: dict[str, str] = {
    "parent_path": "tar_unsafe_path",
    "absolute_path": "tar_unsafe_path",
    "symlink": "tar_member_link",
    "hardlink": "tar_member_link",
    "device": "tar_member_not_file",
    "fifo": "tar_member_not_file",
    "oversize": "tar_member_too_large",
    "truncated": "tar_truncated",
    "corrupt_header": "tar_truncated",
    "undecodable_image": "image_undecodable",
    "truncated_image": "image_undecodable",
    "caption_missing": "caption_missing",
    "caption_not_utf8": "caption_not_utf8",
    "caption_empty": "caption_empty",
    "image_missing": "image_missing",
    "duplicate_key": "duplicate_id",
    "metadata_invalid": "metadata_invalid",
    "huge_extended_header": "tar_truncated",
}


@dataclass(frozen=True)
class HostileCase:
    """A hostile shard and what reading it must give."""

    path: Path
    kind: str
    reason: str
    good_keys: list[str]  # keys that must come out as rows
    hostile_row: str  # the quarantine `row` of the hostile sample (or the damaged rest)
    escape_targets: list[Path] = field(default_factory=list)  # must never be created


def _good(tar: tarfile.TarFile, key: str, sample: RenderedSample) -> None:
    _add_member(tar, f"{key}.jpg", sample.image)
    _add_member(tar, f"{key}.txt", sample.caption.encode("utf-8"))


def _special(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mtime = 0
    tar.addfile(info)


def write_hostile_tar(
    path: str | Path,
    kind: str,
    *,
    seed: int = 0,
    good_samples: int = 4,
    oversize_bytes: int = 64_000,
    absolute_name: str = "/tmp/clipops-hostile-absolute.txt",
) -> HostileCase:
    """A shard of `good_samples` good samples with one `kind` sample in the middle.

    For "oversize" the hostile member has `oversize_bytes` bytes (read it with a smaller
    max_member_bytes). For "truncated" the file is cut inside the hostile sample's image;
    for "corrupt_header" that member's header block is overwritten with noise. Names that
    escape (`../evil.txt`, `absolute_name`) are listed in `escape_targets`.
    """
    if kind not in HOSTILE_KINDS:
        raise ValueError(f"unknown hostile kind {kind!r}; expected one of {sorted(HOSTILE_KINDS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = list(render_samples(good_samples + 1, seed))
    keys = [f"{i:04d}" for i in range(good_samples + 1)]
    bad_at = good_samples // 2
    bad_key = keys[bad_at]
    hostile_row = f"{path.stem}/{bad_key}"
    escape: list[Path] = []
    starts: list[int] = []  # byte offset of each sample's first header
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i, (key, sample) in enumerate(zip(keys, samples, strict=True)):
            starts.append(tar.offset)
            if i != bad_at:
                _good(tar, key, sample)
                continue
            if kind == "parent_path":
                _add_member(tar, "../evil.txt", b"written outside the work dir")
                escape.append(path.parent.parent / "evil.txt")
                hostile_row = f"{path.stem}/../evil"
            elif kind == "absolute_path":
                _add_member(tar, absolute_name, b"written at an absolute path")
                escape.append(Path(absolute_name))
                hostile_row = f"{path.stem}/{absolute_name.rsplit('.', 1)[0]}"
            elif kind == "symlink":
                _special(tar, f"{key}.jpg", tarfile.SYMTYPE, "/etc/passwd")
                _add_member(tar, f"{key}.txt", sample.caption.encode())
            elif kind == "hardlink":
                _special(tar, f"{key}.jpg", tarfile.LNKTYPE, "../../etc/passwd")
                _add_member(tar, f"{key}.txt", sample.caption.encode())
            elif kind == "device":
                _special(tar, f"{key}.jpg", tarfile.CHRTYPE)
            elif kind == "fifo":
                _special(tar, f"{key}.jpg", tarfile.FIFOTYPE)
            elif kind == "oversize":
                noise = np.random.default_rng(seed).bytes(oversize_bytes)
                _add_member(tar, f"{key}.jpg", noise)
                _add_member(tar, f"{key}.txt", sample.caption.encode())
            elif kind in ("truncated", "corrupt_header"):
                _good(tar, key, sample)  # damaged below, once the file is complete
            elif kind == "undecodable_image":
                _add_member(tar, f"{key}.jpg", b"\xff\xd8\xff\xe0 this is not a JPEG" * 20)
                _add_member(tar, f"{key}.txt", sample.caption.encode())
            elif kind == "truncated_image":
                _add_member(tar, f"{key}.jpg", sample.image[: len(sample.image) // 2])
                _add_member(tar, f"{key}.txt", sample.caption.encode())
            elif kind == "caption_missing":
                _add_member(tar, f"{key}.jpg", sample.image)
            elif kind == "caption_not_utf8":
                _add_member(tar, f"{key}.jpg", sample.image)
                _add_member(tar, f"{key}.txt", b"caf\xe9 latin-1 \xff")
            elif kind == "caption_empty":
                _add_member(tar, f"{key}.jpg", sample.image)
                _add_member(tar, f"{key}.txt", b" \n\t ")
            elif kind == "image_missing":
                _add_member(tar, f"{key}.txt", sample.caption.encode())
                _add_member(tar, f"{key}.json", b"{}")
            elif kind == "duplicate_key":
                # The key of an earlier sample again, after other samples: not consecutive.
                _good(tar, keys[0], sample)
                hostile_row = f"{path.stem}/{keys[0]}"
            elif kind == "metadata_invalid":
                _good(tar, key, sample)
                _add_member(tar, f"{key}.json", b"{not json")
            elif kind == "huge_extended_header":
                # A pax header of 1.2 MB: tarfile alone would read it whole into memory.
                info = tarfile.TarInfo(f"{key}.jpg")
                info.size, info.mtime = len(sample.image), 0
                info.pax_headers = {"comment": "x" * 1_200_000}
                tar.addfile(info, io.BytesIO(sample.image))
                _add_member(tar, f"{key}.txt", sample.caption.encode())
    good_keys = [k for i, k in enumerate(keys) if i != bad_at]
    if kind in ("truncated", "corrupt_header", "huge_extended_header"):
        if kind != "huge_extended_header":
            _damage(path, kind, starts[bad_at], seed)
        # Reading stops at the damage. A cut inside member data is seen there, so every
        # earlier sample is kept; damage in a header is seen before the next key is known,
        # so the sample before it may have lost members and is counted with the unread rest.
        kept = bad_at if kind == "truncated" else bad_at - 1
        good_keys = keys[:kept]
        hostile_row = f"{path.name}@{starts[kept]}"
    return HostileCase(path, kind, HOSTILE_KINDS[kind], good_keys, hostile_row, escape)


def _damage(path: Path, kind: str, header_offset: int, seed: int) -> None:
    data = bytearray(path.read_bytes())
    if kind == "truncated":
        # Cut in the middle of the sample's image data (just after its 512-byte header).
        with tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r") as tar:
            image = next(m for m in tar.getmembers() if m.offset == header_offset)
        del data[image.offset_data + image.size // 2 :]
    else:
        noise = np.random.default_rng(seed).bytes(tarfile.BLOCKSIZE)
        data[header_offset : header_offset + tarfile.BLOCKSIZE] = noise
    path.write_bytes(bytes(data))
