"""Pool shards: tar and Parquet readers, hostile members, the sharded writer, bounded memory."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.curation.pool_fixtures import (
    HOSTILE_KINDS,
    render_samples,
    write_caption_table,
    write_hostile_tar,
    write_tar_shards,
)
from tasks.curation.pool_rows import SeenIds
from tasks.curation.pool_schema import POOL_SCHEMA
from tasks.curation.shard_writer import MANIFEST_NAME, read_manifest
from tasks.curation.shards import PoolChunk, ShardWriter, expand_inputs, iter_pool
from tasks.errors import StageError
from tasks.pair_table import QUARANTINE_REASONS, QUARANTINE_SCHEMA


def _read_all(inputs, **options) -> tuple[list[PoolChunk], pa.Table, pa.Table]:
    chunks = list(iter_pool(inputs, **options))
    for chunk in chunks:
        assert chunk.rows.schema.equals(POOL_SCHEMA)
        assert chunk.quarantine.schema.equals(QUARANTINE_SCHEMA)
    rows = pa.concat_tables([c.rows for c in chunks]) if chunks else POOL_SCHEMA.empty_table()
    quarantine = pa.concat_tables([c.quarantine for c in chunks])
    return chunks, rows, quarantine


def _reasons(quarantine: pa.Table) -> dict[str, str]:
    """Quarantine `row` -> reason (the rows are unique in every test that uses it)."""
    rows = quarantine.column("row").to_pylist()
    assert len(set(rows)) == len(rows)
    return dict(zip(rows, quarantine.column("reason").to_pylist(), strict=True))


def _tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_tar_shards_round_trip_through_the_writer(tmp_path: Path) -> None:
    shards = write_tar_shards(tmp_path / "pool", 3, 40, seed=1, failed_per_shard=2)
    chunks, rows, quarantine = _read_all(tmp_path / "pool", chunk_rows=16)

    # Accounting: every sidecar key is one row or one quarantine row.
    assert rows.num_rows == 3 * 40 and quarantine.num_rows == 3 * 2
    assert set(quarantine.column("reason").to_pylist()) == {"download_failed"}
    assert all(c.rows.num_rows <= 16 for c in chunks)
    assert {c.shard for c in chunks} == {p.name for p in shards}  # sidecars are not tables

    expected: dict[str, tuple[bytes, str]] = {}
    for shard in shards:
        members = _tar_members(shard)
        for name, data in members.items():
            if name.endswith(".jpg"):
                key = name[: -len(".jpg")]
                expected[f"{shard.stem}/{key}"] = (data, members[f"{key}.txt"].decode())
    table = rows.to_pydict()
    assert sorted(table["id"]) == sorted(expected)
    for i, row_id in enumerate(table["id"]):
        image, caption = expected[row_id]
        assert table["image"][i] == image
        assert table["sha256"][i] == hashlib.sha256(image).hexdigest()
        assert table["caption"][i] == caption
        assert (table["width"][i], table["height"][i]) == (64, 64)
    assert set(table["shard"]) == {p.name for p in shards}

    out = tmp_path / "curated"
    with ShardWriter(out, rows_per_shard=50) as writer:
        for chunk in chunks:
            writer.write(chunk.rows)
    manifest = read_manifest(out)
    assert [s["file"] for s in manifest["shards"]] == [f"part-0000{i}.parquet" for i in range(3)]
    assert [s["rows"] for s in manifest["shards"]] == [50, 50, 20]
    assert manifest["total_rows"] == 120 and manifest["columns"] == POOL_SCHEMA.names

    # A curated pool is a pool: read again, ids and shard names are kept.
    again_chunks, again, again_quarantine = _read_all(out, chunk_rows=16)
    assert again_quarantine.num_rows == 0
    assert all(c.rows.num_rows <= 16 for c in again_chunks)
    assert again.to_pylist() == rows.to_pylist()


@pytest.mark.parametrize("caption_in", ["json", "sidecar"])
def test_captions_from_json_or_sidecar_when_txt_is_missing(tmp_path: Path, caption_in: str) -> None:
    write_tar_shards(tmp_path / "txt", 1, 12, seed=2)
    write_tar_shards(tmp_path / caption_in, 1, 12, seed=2, caption_in=caption_in)
    assert not any(n.endswith(".txt") for n in _tar_members(tmp_path / caption_in / "00000.tar"))
    _, from_txt, _ = _read_all(tmp_path / "txt")
    _, other, quarantine = _read_all(tmp_path / caption_in)
    assert quarantine.num_rows == 0
    assert other.column("caption").to_pylist() == from_txt.column("caption").to_pylist()


def test_sidecar_status_and_unreadable_sidecar(tmp_path: Path) -> None:
    (shard,) = write_tar_shards(tmp_path, 1, 10, seed=3, failed_per_shard=3)
    sidecar = pq.read_table(shard.with_suffix(".parquet")).to_pylist()
    failed = {r["key"] for r in sidecar if r["status"] != "success"}
    good = next(r["key"] for r in sidecar if r["status"] == "success")
    # A sample the tar holds but the sidecar calls failed is quarantined too.
    patched = [r | {"status": "failed_to_resize"} if r["key"] == good else r for r in sidecar]
    pq.write_table(pa.Table.from_pylist(patched), shard.with_suffix(".parquet"))
    _, rows, quarantine = _read_all(shard)
    assert _reasons(quarantine) == {f"00000/{k}": "download_failed" for k in failed | {good}}
    assert rows.num_rows == 9

    shard.with_suffix(".parquet").write_bytes(b"PAR1 not really parquet")
    _, rows, quarantine = _read_all(shard)
    assert rows.num_rows == 10
    assert quarantine.column("reason").to_pylist() == ["sidecar_unreadable"]


@pytest.mark.parametrize("kind", sorted(HOSTILE_KINDS))
def test_hostile_tar_member_is_quarantined_and_nothing_escapes(tmp_path: Path, kind: str) -> None:
    work = tmp_path / "work"
    case = write_hostile_tar(
        work / f"{kind}.tar", kind, absolute_name=str(tmp_path.parent / f"abs-{kind}.txt")
    )
    around = _tree(tmp_path.parent)
    before = {p: p.read_bytes() for p in work.iterdir()}
    _, rows, quarantine = _read_all(case.path, max_member_bytes=50_000, chunk_rows=2)

    assert quarantine.to_pylist()[0]["reason"] == case.reason
    assert quarantine.column("reason").to_pylist() == [case.reason]
    assert quarantine.column("row").to_pylist() == [case.hostile_row]
    assert case.reason in QUARANTINE_REASONS
    assert rows.column("id").to_pylist() == [f"{kind}/{k}" for k in case.good_keys]
    assert all(rows.column("caption").to_pylist())
    # Nothing was written anywhere: not beside the shard, not above it, not at the targets.
    assert _tree(tmp_path.parent) == around
    assert {p: p.read_bytes() for p in work.iterdir()} == before
    for target in case.escape_targets:
        assert not target.exists(), target


def test_truncated_shard_keeps_the_good_prefix(tmp_path: Path) -> None:
    (shard,) = write_tar_shards(tmp_path, 1, 30, seed=4)
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    cut = members[len(members) * 2 // 3]
    with shard.open("r+b") as f:
        f.truncate(cut.offset_data + cut.size // 2)
    _, rows, quarantine = _read_all(shard, chunk_rows=7)

    keys = sorted({m.name.split(".")[0] for m in members})
    ids = [i.split("/", 1)[1] for i in rows.column("id").to_pylist()]
    complete = {m.name.split(".")[0] for m in members if m.offset_data + m.size <= cut.offset_data}
    assert ids == keys[: len(ids)]  # a prefix, in order
    assert len(ids) >= len(complete) - 1  # at most the sample in doubt is lost
    (damage,) = quarantine.to_pylist()
    assert damage["reason"] == "tar_truncated"
    offset = int(damage["row"].rsplit("@", 1)[1])
    assert 0 < offset <= cut.offset
    assert f"of {cut.offset_data + cut.size // 2} was not read" in damage["detail"]
    assert "sidecar keys were not reached" in damage["detail"]


def test_unreadable_files_are_quarantined_and_the_pool_goes_on(tmp_path: Path) -> None:
    write_tar_shards(tmp_path, 1, 5, seed=5, sidecar=False)
    (tmp_path / "garbage.tar").write_bytes(os.urandom(3000))
    (tmp_path / "empty.tar").write_bytes(b"")
    (tmp_path / "nocaption.parquet").write_bytes(b"")
    pq.write_table(pa.table({"text": ["a dog"]}), tmp_path / "other.parquet")
    _, rows, quarantine = _read_all(tmp_path)
    assert rows.num_rows == 5
    assert _reasons(quarantine) == {
        "empty.tar@0": "shard_unreadable",
        "garbage.tar@0": "shard_unreadable",
        "nocaption.parquet": "shard_unreadable",
        "other.parquet": "shard_unreadable",
    }


def test_text_only_parquet_pool(tmp_path: Path) -> None:
    path = write_caption_table(tmp_path / "captions.parquet", 2500, seed=6, row_group_rows=1000)
    chunks, rows, quarantine = _read_all(path, chunk_rows=300)
    assert quarantine.num_rows == 0 and rows.num_rows == 2500
    assert all(c.rows.num_rows <= 300 for c in chunks)
    assert rows.column("id").to_pylist()[:2] == ["captions/000000000", "captions/000000001"]
    for name in ("image", "sha256", "width", "height", "label"):
        assert rows.column(name).null_count == 2500, name
    source = pq.read_table(path)
    assert rows.column("caption").to_pylist() == source.column("caption").to_pylist()

    bad = pa.table(
        {
            "id": ["a", "b", "c", "a", None, "f"],
            "caption": ["a red fox", None, "   ", "a blue car", "a cat", "a dog"],
            "split": ["train", "eval", "train", "train", "train", "test"],
        }
    )
    pq.write_table(bad, tmp_path / "bad.parquet")
    _, rows, quarantine = _read_all(tmp_path / "bad.parquet", chunk_rows=4)
    assert rows.column("id").to_pylist() == ["bad/a"]
    assert rows.column("split").to_pylist() == ["train"]
    assert _reasons(quarantine) == {
        "bad/b": "caption_missing",
        "bad/c": "caption_empty",
        "bad/a": "duplicate_id",
        "bad/4": "id_missing",
        "bad/f": "split_invalid",
    }


def test_parquet_caption_columns_of_other_types(tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"caption": pa.array([b"a fox", b"caf\xe9", b""], pa.binary())}),
        tmp_path / "binary.parquet",
    )
    pq.write_table(pa.table({"caption": [1, 2]}), tmp_path / "numbers.parquet")
    encoded = pa.array(["a cat", None, " a cat "]).dictionary_encode()
    pq.write_table(pa.table({"caption": encoded}), tmp_path / "dictionary.parquet")
    _, rows, quarantine = _read_all(tmp_path)
    assert rows.column("id").to_pylist() == ["binary/0", "dictionary/0", "dictionary/2"]
    assert rows.column("caption").to_pylist() == ["a fox", "a cat", "a cat"]
    assert quarantine.column("reason").to_pylist() == [
        "caption_not_utf8",
        "caption_empty",
        "caption_missing",
        "caption_not_text",
        "caption_not_text",
    ]


def test_parquet_with_images(tmp_path: Path) -> None:
    samples = list(render_samples(5, seed=7, image_format="PNG"))
    images = [s.image for s in samples]
    images[3] = images[3][:40]  # cut PNG
    sha = [None, samples[1].sha256, "0" * 64, None, None]
    table = pa.table(
        {
            "key": ["k0", "k1", "k2", "k3", "k4"],
            "caption": [s.caption for s in samples],
            "image": pa.array(images, pa.binary()),
            "sha256": sha,
            "label": ["x", None, "y", "z", None],
        }
    )
    pq.write_table(table, tmp_path / "pairs.parquet")
    _, rows, quarantine = _read_all(tmp_path / "pairs.parquet")
    assert rows.column("id").to_pylist() == ["pairs/k0", "pairs/k1", "pairs/k4"]
    assert rows.column("sha256").to_pylist() == [samples[i].sha256 for i in (0, 1, 4)]
    assert rows.column("image").to_pylist() == [images[i] for i in (0, 1, 4)]
    assert rows.column("width").to_pylist() == [64, 64, 64]
    assert rows.column("label").to_pylist() == ["x", None, None]
    assert quarantine.column("reason").to_pylist() == ["sha256_mismatch", "image_undecodable"]

    # Hugging Face datasets store images as {bytes, path} structs; image bytes can be left out.
    struct = pa.StructArray.from_arrays(
        [pa.array([samples[0].image], pa.binary()), pa.array(["a.png"])], ["bytes", "path"]
    )
    pq.write_table(pa.table({"caption": ["a"], "image": struct}), tmp_path / "hf.parquet")
    _, rows, _ = _read_all(tmp_path / "hf.parquet", with_images=False)
    assert rows.column("image").to_pylist() == [None]
    assert rows.column("sha256").to_pylist() == [samples[0].sha256]


def test_expand_inputs_rules(tmp_path: Path) -> None:
    (a, b) = write_tar_shards(tmp_path / "a", 2, 2, seed=8)
    write_tar_shards(tmp_path / "b", 1, 2, seed=8)
    assert expand_inputs(tmp_path / "a") == [a, b]
    assert expand_inputs([a, a.with_suffix(".parquet")]) == [a]  # a sidecar is not a table
    with pytest.raises(StageError, match="share the name '00000'"):
        expand_inputs([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(StageError, match="does not exist"):
        expand_inputs([tmp_path / "missing"])
    (tmp_path / "notes.csv").write_text("x")
    with pytest.raises(StageError, match="neither a tar shard"):
        expand_inputs([tmp_path / "notes.csv"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(StageError, match="holds no"):
        expand_inputs([tmp_path / "empty"])


def test_shard_writer_rolls_over_atomically(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-00009.parquet").write_bytes(b"stale")
    path = write_caption_table(tmp_path / "c.parquet", 18, seed=9)
    table = pa.concat_tables([c.rows for c in iter_pool(path)])
    with ShardWriter(out, rows_per_shard=7, row_group_rows=3) as writer:
        for start in (0, 5, 10, 15, 17):
            writer.write(table.slice(start, 5 if start < 15 else 2 if start == 15 else 1))
        assert writer.total_rows == 18
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "manifest.json",
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert [s["rows"] for s in manifest["shards"]] == [7, 7, 4]
    first = pq.ParquetFile(out / "part-00000.parquet").metadata
    assert [first.row_group(i).num_rows for i in range(first.num_row_groups)] == [3, 3, 1]
    written = pa.concat_tables([pq.read_table(out / f) for f in files[1:]])
    assert written.column("id").to_pylist() == table.column("id").to_pylist()

    with pytest.raises(ValueError, match="lacks columns"):
        ShardWriter(tmp_path / "bad").write(pa.table({"id": ["x"]}))

    with pytest.raises(RuntimeError, match="boom"), ShardWriter(tmp_path / "failed", 100) as w:
        w.write(table)
        raise RuntimeError("boom")
    assert list((tmp_path / "failed").iterdir()) == []  # no half shard, no manifest
    with pytest.raises(FileNotFoundError, match="incomplete"):
        read_manifest(tmp_path / "failed")


def _bounded_read(pool: Path, chunk_rows: int) -> tuple[int, int, int]:
    """(rows, largest chunk, tracemalloc peak bytes) of one pass over `pool`.

    A first chunk is read before tracing starts, so that one-off lazy imports (PIL plugins,
    Arrow kernels) do not count as reading memory.
    """
    next(iter_pool(pool, chunk_rows=chunk_rows))
    tracemalloc.start()
    try:
        n, largest = 0, 0
        for chunk in iter_pool(pool, chunk_rows=chunk_rows):
            n += chunk.rows.num_rows
            largest = max(largest, chunk.rows.num_rows)
        return n, largest, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _content_bytes(pool: Path) -> int:
    total = 0
    for shard in sorted(pool.glob("*.tar")):
        total += sum(len(v) for k, v in _tar_members(shard).items() if not k.endswith(".json"))
    return total


def test_memory_stays_bounded_by_the_chunk(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    write_tar_shards(pool, 2, 300, seed=10, image_size=256, distinct_images=16, sidecar=False)
    total = _content_bytes(pool)
    n, largest, peak = _bounded_read(pool, chunk_rows=20)
    assert n == 600 and largest == 20
    # Peak ~0.25 MB whatever the pool size (0.27 MB for twice this pool); content 2.5 MB.
    assert peak < total / 5, (peak, total)


@pytest.mark.slow
def test_memory_stays_bounded_over_20k_samples(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    write_tar_shards(pool, 4, 5000, seed=11, distinct_images=64, sidecar=False)
    total = _content_bytes(pool)
    n, largest, peak = _bounded_read(pool, chunk_rows=500)
    assert n == 20_000 and largest == 500
    assert peak < total / 8, (peak, total)


def test_fixture_shards_are_deterministic(tmp_path: Path) -> None:
    a = write_tar_shards(tmp_path / "a", 1, 6, seed=12)
    b = write_tar_shards(tmp_path / "b", 1, 6, seed=12)
    assert a[0].read_bytes() == b[0].read_bytes()
    assert np.array_equal(
        pq.read_table(a[0].with_suffix(".parquet"))["sha256"].to_numpy(zero_copy_only=False),
        pq.read_table(b[0].with_suffix(".parquet"))["sha256"].to_numpy(zero_copy_only=False),
    )


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.text(max_size=3), max_size=40), max_size=30))
def test_seen_ids_matches_a_set(batches: list[list[str]]) -> None:
    seen, reference = SeenIds(), set()
    for batch in batches:
        expected = []
        for value in batch:
            expected.append(value in reference)
            reference.add(value)
        assert seen.add(batch).tolist() == expected
    assert len(seen) == len(reference)


def test_ids_repeated_across_pool_files_are_quarantined(tmp_path: Path) -> None:
    path = write_caption_table(tmp_path / "c.parquet", 10, seed=13)
    rows = pa.concat_tables([c.rows for c in iter_pool(path)])
    with ShardWriter(tmp_path / "out", rows_per_shard=6) as writer:
        writer.write(rows)
        writer.write(rows.slice(8))  # rows 8 and 9 again, in the second shard
    _, again, quarantine = _read_all(tmp_path / "out")
    assert again.column("id").to_pylist() == rows.column("id").to_pylist()
    assert _reasons(quarantine) == {"c/000000008": "duplicate_id", "c/000000009": "duplicate_id"}


def test_gzipped_shard_and_dot_slash_names_read_the_same(tmp_path: Path) -> None:
    (shard,) = write_tar_shards(tmp_path / "plain", 1, 8, seed=14)
    gz = tmp_path / "gz"
    gz.mkdir()
    (gz / "00000.tar.gz").write_bytes(gzip.compress(shard.read_bytes(), mtime=0))
    (gz / "00000.parquet").write_bytes(shard.with_suffix(".parquet").read_bytes())
    # `tar --sort=name -C dir .` style: a "./" directory entry and "./"-prefixed members.
    dotted = tmp_path / "dotted" / "00000.tar"
    dotted.parent.mkdir()
    with tarfile.open(shard) as src, tarfile.open(dotted, "w") as dst:
        top = tarfile.TarInfo(".")
        top.type = tarfile.DIRTYPE
        dst.addfile(top)
        for member in src.getmembers():
            data = src.extractfile(member).read()
            member.name = f"./{member.name}"
            dst.addfile(member, io.BytesIO(data))
    _, plain, _ = _read_all(shard)
    for other in (gz, dotted):
        _, rows, quarantine = _read_all(other)
        assert quarantine.num_rows == 0
        assert rows.drop_columns(["shard"]).equals(plain.drop_columns(["shard"]))


def test_scattered_samples_are_regrouped_in_plain_tars_and_quarantined_in_gzipped_ones(
    tmp_path: Path,
) -> None:
    (shard,) = write_tar_shards(tmp_path / "sorted", 1, 12, seed=15, sidecar=False)
    _, ordered, _ = _read_all(shard)
    with tarfile.open(shard) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    # Directory order, as `tar cf shard.tar folder/` writes: a sample's members apart.
    order = np.random.default_rng(0).permutation(len(members))
    scattered = tmp_path / "scattered" / "00000.tar"
    scattered.parent.mkdir()
    with tarfile.open(scattered, "w") as dst:
        for i in order:
            dst.addfile(members[i][0], io.BytesIO(members[i][1]))
    _, rows, quarantine = _read_all(scattered)
    assert quarantine.num_rows == 0
    assert sorted(rows.to_pylist(), key=str) == sorted(ordered.to_pylist(), key=str)

    # Compressed shards can only be streamed: scattered members are quarantined, with advice.
    gz = tmp_path / "gz" / "00000.tar.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(scattered.read_bytes(), mtime=0))
    _, rows, quarantine = _read_all(gz)
    assert rows.num_rows < 12 and quarantine.num_rows > 0
    assert "duplicate_id" in quarantine.column("reason").to_pylist()
    assert any("--sort=name" in d for d in quarantine.column("detail").to_pylist())


def test_a_repeated_key_keeps_its_first_sample_when_streamed_too(tmp_path: Path) -> None:
    case = write_hostile_tar(tmp_path / "dup.tar", "duplicate_key")
    gz = tmp_path / "gz" / "dup.tar.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(case.path.read_bytes(), mtime=0))
    for path in (case.path, gz):  # indexed (plain tar) and streamed (gzip) readers agree
        _, rows, quarantine = _read_all(path)
        assert rows.column("id").to_pylist() == [f"dup/{k}" for k in case.good_keys]
        assert _reasons(quarantine) == {case.hostile_row: "duplicate_id"}
