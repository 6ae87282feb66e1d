"""Stream img2dataset / webdataset tar shards into pool chunks, quarantining hostile members.

A shard holds samples as consecutive members sharing a key (webdataset's rule: the key is
the member path up to the first dot of its file name, the rest is the extension):
`{key}.jpg|.jpeg|.png|.webp` (the image), `{key}.txt` (the caption) and `{key}.json`
(metadata, may hold "caption"). img2dataset writes a Parquet sidecar `{shard}.parquet`
beside the tar (key, caption, status, sha256, ...); it supplies captions the members lack,
and its failed downloads (status != "success") become quarantine rows.

The tar is read with the stdlib `tarfile` in stream mode, member by member: nothing is ever
extracted to disk, a member's bytes are read only after its type and size passed the checks,
and memory holds one sample plus one chunk. An uncompressed tar whose samples are
scattered (`tar cf` over a folder) is read in two passes instead: headers grouped by key,
then members by seeking. Every sample (a key group) ends as exactly one pool row or one
quarantine row; damage that stops reading (a truncated or corrupt tar) adds one row for
the unread rest, naming its byte offset.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from tasks.curation.pool_rows import (
    ChunkBuilder,
    PoolChunk,
    SampleRejected,
    check_caption,
    probe_image,
)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # preference order when a sample has several
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# A valid tar ends with two 512-byte zero blocks (then zero padding to its record size).
_END_OF_ARCHIVE_BYTES = 1024
_TAIL_READ = 1 << 16
# Pax and GNU long-name headers are metadata that tarfile reads into memory whole; real ones
# are bytes to kilobytes. A bigger one is refused before tarfile allocates it.
MAX_EXTENDED_HEADER_BYTES = 1 << 20
_EXTENDED_HEADER_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
_DRIVE = re.compile(r"^[A-Za-z]:")
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


def shard_stem(path: Path) -> str:
    """The shard's name without its tar/parquet suffix: `00012.tar.gz` -> `00012`."""
    name = path.name
    for suffix in (*TAR_SUFFIXES, ".parquet"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return path.stem


def sidecar_path(tar_path: Path) -> Path:
    """Where img2dataset puts a shard's Parquet sidecar: beside it, same stem."""
    return tar_path.with_name(shard_stem(tar_path) + ".parquet")


def split_member_name(name: str) -> tuple[str, str]:
    """(key, extension) by webdataset's rule: the key ends at the file name's first dot.

    `./0001/00012.seg.png` -> (`0001/00012`, `seg.png`); a leading `./` is not part of the key.
    """
    while name.startswith("./"):
        name = name[2:]
    directory, _, filename = name.rpartition("/")
    stem, dot, extension = filename.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, extension.lower() if dot else ""


def unsafe_member_name(name: str) -> str | None:
    """Why a member name could escape an extraction directory, or None when it cannot."""
    if not name or "\x00" in name:
        return "empty name or NUL byte"
    parts = name.replace("\\", "/").split("/")
    if not parts[0] or _DRIVE.match(parts[0]):  # "/etc/x", "\\x", "C:/x", "c:x"
        return "absolute path"
    if ".." in parts:
        return "'..' component"
    return None


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses an extended header above MAX_EXTENDED_HEADER_BYTES.

    tarfile would read it whole (up to the size of the file); the ReadError raised instead
    ends the shard as damaged from this header on.
    """

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_HEADER_TYPES and self.size > MAX_EXTENDED_HEADER_BYTES:
            raise tarfile.ReadError(
                f"extended header of {self.size} bytes at byte {self.offset} is above "
                f"{MAX_EXTENDED_HEADER_BYTES}"
            )
        return super()._proc_member(tarfile_)


@dataclass
class _Sample:
    """The members of one key group, read so far; `reason` set once it is rejected."""

    key: str
    offset: int  # byte offset of its first member's header
    members: dict[str, bytes] = field(default_factory=dict)
    other_extensions: list[str] = field(default_factory=list)
    reason: str | None = None
    detail: str = ""

    def reject(self, reason: str, detail: str) -> None:
        if self.reason is None:  # the first problem found is the one reported
            self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class _SidecarEntry:
    caption: object
    status: str | None
    error: str | None
    sha256: str | None


def _read_sidecar(path: Path) -> dict[str, _SidecarEntry]:
    """key -> entry from an img2dataset sidecar (one shard's worth: small, read whole)."""
    schema = pq.read_schema(path)
    if "key" not in schema.names:
        raise ValueError(f"no 'key' column (columns: {schema.names})")
    fields = ("key", "caption", "status", "error_message", "sha256")
    wanted = [c for c in fields if c in schema.names]
    table = pq.read_table(path, columns=wanted)
    columns = {name: table.column(name).to_pylist() for name in wanted}
    n = table.num_rows
    blank = [None] * n
    entries: dict[str, _SidecarEntry] = {}
    for i, key in enumerate(columns["key"]):
        if key is None or str(key) in entries:
            continue  # img2dataset never repeats keys; a repeat adds nothing to look up
        entries[str(key)] = _SidecarEntry(
            columns.get("caption", blank)[i],
            columns.get("status", blank)[i],
            columns.get("error_message", blank)[i],
            columns.get("sha256", blank)[i],
        )
    return entries


def _is_compressed(raw) -> bool:
    head = raw.read(6)
    raw.seek(0)
    return any(head.startswith(magic) for magic in _COMPRESSED_MAGIC)


def _members_scattered(raw, limit: int = 256) -> bool:
    """Whether a key recurs after another key among the first `limit` members.

    Shards written by img2dataset, webdataset or `tar --sort=name` keep a sample's members
    together; `tar cf` over a folder lists them in directory order, scattered. Damage
    here is left for the reading pass to report.
    """
    seen: set[str] = set()
    last = None
    try:
        with tarfile.open(fileobj=raw, mode="r:", tarinfo=_BoundedTarInfo) as tar:
            for _ in range(limit):
                if (info := tar.next()) is None:
                    break
                key = split_member_name(info.name)[0]
                if info.isdir() or key == last:
                    continue
                if key in seen:
                    return True
                seen.add(key)
                last = key
    except (tarfile.TarError, EOFError, OSError):
        return False
    finally:
        raw.seek(0)
    return False


def _tail_problem(raw, end_offset: int) -> str | None:
    """Why the bytes after the last member are not a clean end-of-archive, or None.

    tarfile ends iteration silently at a cut header or a corrupt one (bad checksum), so
    the end marker is checked here: at least two zero blocks and nothing but zeros after.
    """
    raw.seek(end_offset)
    zeros = 0
    while block := raw.read(_TAIL_READ):
        if block.count(0) != len(block):
            return f"non-zero bytes after the last readable member at byte {end_offset}"
        zeros += len(block)
    if zeros < _END_OF_ARCHIVE_BYTES:
        return f"the file ends at byte {end_offset + zeros} without the end-of-archive marker"
    return None


class _TarShardReader:
    """Reads one tar shard; `chunks()` yields its PoolChunks."""

    def __init__(
        self,
        path: Path,
        *,
        chunk_rows: int,
        max_member_bytes: int,
        source: str,
        split: str,
        with_images: bool,
    ) -> None:
        self.path = path
        self.stem = shard_stem(path)
        self.max_member_bytes = max_member_bytes
        self.source = source
        self.split = split
        self.with_images = with_images
        self.builder = ChunkBuilder(path.name, chunk_rows)
        self.sidecar: dict[str, _SidecarEntry] = {}
        self.seen: set[str] = set()

    def _id(self, key: str) -> str:
        return f"{self.stem}/{key}"

    def chunks(self) -> Iterator[PoolChunk]:
        sidecar = sidecar_path(self.path)
        if sidecar.exists():
            try:
                self.sidecar = _read_sidecar(sidecar)
            except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
                detail = f"sidecar {sidecar.name} ignored: {type(exc).__name__}: {exc}"
                yield from self._quarantine(self.path.name, "sidecar_unreadable", detail)
        damage = yield from self._read_members()
        if damage is not None:
            reason, offset, detail = damage
            yield from self._quarantine(f"{self.path.name}@{offset}", reason, detail)
        else:
            yield from self._sidecar_leftovers()
        yield from self.builder.finish()

    def _read_members(self) -> Iterator[PoolChunk]:
        """Read the members; returns (reason, offset, detail) when damage stopped the reading."""
        tar = None
        try:
            with self.path.open("rb") as raw:
                compressed = _is_compressed(raw)
                if not compressed and _members_scattered(raw):
                    return (yield from self._read_indexed(raw))
                try:
                    # Closed by the `with tar` in _stream; opened here to tell "not a tar" apart.
                    tar = tarfile.open(  # noqa: SIM115
                        fileobj=raw, mode="r|*", tarinfo=_BoundedTarInfo
                    )
                except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
                    detail = f"not a readable tar archive: {type(exc).__name__}: {exc}"
                    return "shard_unreadable", 0, detail
                return (yield from self._stream(tar, raw, compressed))
        except OSError as exc:  # the file itself could not be opened or read
            return "shard_unreadable", 0, f"could not read the shard: {exc}"

    def _stream(self, tar: tarfile.TarFile, raw, compressed: bool) -> Iterator[PoolChunk]:
        """One pass in stream mode, a sample at a time (the common, ordered case)."""
        current: _Sample | None = None
        try:
            with tar:
                while (info := tar.next()) is not None:
                    # tarfile keeps every TarInfo it has read; one shard of 10k samples would
                    # hold ~30k of them, so drop them as we go (stream mode never looks back).
                    tar.members.clear()
                    if info.isdir():
                        continue  # a directory entry carries no sample data
                    key, extension = split_member_name(info.name)
                    if current is None or key != current.key:
                        if current is not None:
                            yield from self._emit(current)
                        current = self._start_sample(key, info.offset)
                    self._add_member(tar, current, info, extension)
                if not compressed and (problem := _tail_problem(raw, tar.offset)):
                    # The last group may have lost members to the damage: count it with
                    # the unread rest rather than emit a partial sample.
                    start = current.offset if current is not None else tar.offset
                    return "tar_truncated", start, self._damage_detail(problem, current, start)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            start = current.offset if current is not None else tar.offset
            problem = f"{type(exc).__name__}: {exc}"
            return "tar_truncated", start, self._damage_detail(problem, current, start)
        if current is not None:
            yield from self._emit(current)
        return None

    def _read_indexed(self, raw) -> Iterator[PoolChunk]:
        """Two passes for an uncompressed tar whose samples are scattered.

        The first pass reads headers only and groups the members by key; the second reads
        each sample's members by seeking. It costs one TarInfo per member of the shard.
        """
        groups: dict[str, list[tarfile.TarInfo]] = {}
        extensions: dict[str, set[str]] = {}
        repeated: dict[str, list[str]] = {}  # key -> member names met a second time
        try:
            tar = tarfile.open(fileobj=raw, mode="r:", tarinfo=_BoundedTarInfo)  # noqa: SIM115
        except (tarfile.TarError, EOFError, OSError) as exc:
            return "shard_unreadable", 0, f"not a readable tar archive: {exc}"
        with tar:
            try:
                while (info := tar.next()) is not None:
                    tar.members.clear()
                    if info.isdir():
                        continue
                    key, extension = split_member_name(info.name)
                    if extension in extensions.setdefault(key, set()):
                        # A second sample under one key: the first is kept, as when streaming.
                        repeated.setdefault(key, []).append(info.name)
                        continue
                    extensions[key].add(extension)
                    groups.setdefault(key, []).append(info)
                problem = _tail_problem(raw, tar.offset)
            except (tarfile.TarError, EOFError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            for key, members in groups.items():
                sample = self._start_sample(key, members[0].offset)
                for info in members:
                    try:
                        self._add_member(tar, sample, info, split_member_name(info.name)[1])
                    except (tarfile.TarError, OSError) as exc:  # its data runs past the damage
                        sample.reject("tar_truncated", f"member {info.name!r}: {exc}")
                yield from self._emit(sample)
        for key, names in repeated.items():
            detail = f"key {key!r} has members {names} a second time in the shard; the first kept"
            yield from self._quarantine(self._id(key), "duplicate_id", detail)
        if problem:
            return "tar_truncated", tar.offset, self._damage_detail(problem, None, tar.offset)
        return None

    def _damage_detail(self, problem: str, current: _Sample | None, start: int) -> str:
        size = self.path.stat().st_size
        where = f" (from sample {current.key!r})" if current is not None else ""
        unread = sum(1 for key in self.sidecar if key not in self.seen)
        listed = f"; {unread} sidecar keys were not reached" if self.sidecar else ""
        return (
            f"tar damaged ({problem}): the rest of the shard from byte {start}{where} of "
            f"{size} was not read{listed}; samples before it are kept"
        )

    def _start_sample(self, key: str, offset: int) -> _Sample:
        sample = _Sample(key, offset)
        if key in self.seen:
            sample.reject(
                "duplicate_id",
                f"key {key!r} appeared earlier in the shard: a sample's members must be "
                "consecutive (webdataset's rule), so the earlier group was read alone and "
                "this one is not merged; write shards with members grouped by key "
                "(e.g. `tar --sort=name`)",
            )
        self.seen.add(key)
        return sample

    def _add_member(
        self, tar: tarfile.TarFile, sample: _Sample, info: tarfile.TarInfo, extension: str
    ) -> None:
        """Check one member and read its bytes into `sample` (nothing read once rejected)."""
        if sample.reason is not None:
            return
        name = info.name
        if why := unsafe_member_name(name):
            sample.reject("tar_unsafe_path", f"member {name!r}: {why}")
        elif info.issym() or info.islnk():
            kind = "symlink" if info.issym() else "hard link"
            sample.reject("tar_member_link", f"member {name!r} is a {kind} to {info.linkname!r}")
        elif not info.isfile():
            sample.reject("tar_member_not_file", f"member {name!r} has tar type {info.type!r}")
        elif info.size > self.max_member_bytes:
            sample.reject(
                "tar_member_too_large",
                f"member {name!r} has {info.size} bytes > max_member_bytes="
                f"{self.max_member_bytes} (not read)",
            )
        elif extension in sample.members or extension in sample.other_extensions:
            sample.reject("duplicate_id", f"member {name!r} appears twice in one sample")
        elif extension in (*IMAGE_EXTENSIONS, "txt", "json"):
            member = tar.extractfile(info)
            assert member is not None  # a regular file always has a file object
            sample.members[extension] = member.read()
        else:
            sample.other_extensions.append(extension)  # not ours to read (.cls, .npy, ...)

    def _emit(self, sample: _Sample) -> Iterator[PoolChunk]:
        """The sample as one pool row, or one quarantine row with its reason."""
        try:
            row = self._build_row(sample)
        except SampleRejected as exc:
            sample.reject(exc.reason, exc.detail)
        if sample.reason is not None:
            yield from self._quarantine(self._id(sample.key), sample.reason, sample.detail)
        else:
            yield from self.builder.add_row(**row)

    def _build_row(self, sample: _Sample) -> dict[str, object]:
        if sample.reason is not None:
            return {}
        side = self.sidecar.get(sample.key)
        if side is not None and side.status not in (None, "success"):
            raise SampleRejected(
                "download_failed", f"sidecar status {side.status!r}: {side.error or ''}".strip()
            )
        meta = self._metadata(sample)
        image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in sample.members), None)
        if image_ext is None:
            found = sorted([*sample.members, *sample.other_extensions])
            raise SampleRejected("image_missing", f"no image member (found: {found})")
        caption = check_caption(self._caption_value(sample, meta, side))
        data = sample.members[image_ext]
        width, height = probe_image(data)
        digest = hashlib.sha256(data).hexdigest()
        expected = meta.get("sha256") or (side.sha256 if side is not None else None)
        if isinstance(expected, str) and expected and expected.lower() != digest:
            raise SampleRejected(
                "sha256_mismatch", f"{sample.key}.{image_ext}: sha256 {digest} != {expected}"
            )
        label = meta.get("label")
        return {
            "id": self._id(sample.key),
            "sha256": digest,
            "image": data if self.with_images else None,
            "width": width,
            "height": height,
            "caption": caption,
            "source": self.source,
            "label": None if label is None else str(label),
            "split": self.split,
            "shard": self.path.name,
        }

    @staticmethod
    def _metadata(sample: _Sample) -> dict:
        raw = sample.members.get("json")
        if raw is None:
            return {}
        try:
            meta = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SampleRejected("metadata_invalid", f"{sample.key}.json: {exc}") from None
        if not isinstance(meta, dict):
            kind = type(meta).__name__
            raise SampleRejected("metadata_invalid", f"{sample.key}.json holds a {kind}")
        return meta

    @staticmethod
    def _caption_value(sample: _Sample, meta: dict, side: _SidecarEntry | None) -> object:
        """The caption from `.txt`, else the json's "caption", else the sidecar's."""
        if "txt" in sample.members:
            return sample.members["txt"]
        if meta.get("caption") is not None:
            return meta["caption"]
        return side.caption if side is not None else None

    def _sidecar_leftovers(self) -> Iterator[PoolChunk]:
        """Sidecar keys the tar never held: failed downloads, or listed but missing."""
        for key, entry in self.sidecar.items():
            if key in self.seen:
                continue
            if entry.status not in (None, "success"):
                reason = "download_failed"
                detail = f"sidecar status {entry.status!r}: {entry.error or ''}".strip()
            else:
                reason, detail = "image_missing", "listed in the sidecar but not in the tar"
            yield from self._quarantine(self._id(key), reason, detail)

    def _quarantine(self, row: str, reason: str, detail: str) -> Iterator[PoolChunk]:
        yield from self.builder.add_quarantine(row, self.source, reason, detail)


def iter_tar_shard(
    path: Path,
    *,
    chunk_rows: int = 1000,
    max_member_bytes: int = 20_000_000,
    source: str = "pool",
    split: str = "train",
    with_images: bool = True,
) -> Iterator[PoolChunk]:
    """Stream one tar shard as PoolChunks (see the module docstring for the rules)."""
    reader = _TarShardReader(
        Path(path),
        chunk_rows=chunk_rows,
        max_member_bytes=max_member_bytes,
        source=source,
        split=split,
        with_images=with_images,
    )
    yield from reader.chunks()
