"""Content-addressed artifact store: round trip, dedup, layout, integrity checks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from storage.artifacts import ArtifactStore
from tasks.params import StorageParams


def test_put_get_round_trip_and_layout(tmp_path: Path) -> None:
    store = ArtifactStore.from_params(StorageParams(), tmp_path)
    src = tmp_path / "weights.bin"
    payload = bytes(range(256)) * 4096 + b"tail"  # > 1 MiB: exercises chunked hashing
    src.write_bytes(payload)
    digest = store.put(src)
    assert digest == hashlib.sha256(payload).hexdigest()
    stored = store.get(digest, verify=True)
    assert stored == tmp_path / "store" / "artifacts" / "sha256" / digest[:2] / digest[2:]
    assert stored.read_bytes() == payload
    assert store.exists(digest)
    # same bytes again: same address, still one file
    assert store.put(src) == digest
    assert store.put_bytes(payload) == digest
    files = [p for p in (tmp_path / "store" / "artifacts").rglob("*") if p.is_file()]
    assert files == [stored]


def test_missing_bad_and_corrupt_artifacts_are_errors(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")
    missing = hashlib.sha256(b"nothing").hexdigest()
    assert not store.exists(missing)
    with pytest.raises(FileNotFoundError, match="not in the store"):
        store.get(missing)
    with pytest.raises(ValueError, match="not a sha256"):
        store.get("../../etc/passwd")
    with pytest.raises(FileNotFoundError, match="no such file"):
        store.put(tmp_path / "absent.bin")
    digest = store.put_bytes(b"original")
    target = store.get(digest)
    target.chmod(0o644)
    target.write_bytes(b"tampered")
    with pytest.raises(OSError, match="corrupt"):
        store.get(digest, verify=True)


def test_remote_uri_is_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="only local paths"):
        ArtifactStore("s3://bucket/artifacts")


def test_a_wrong_claimed_hash_is_caught_not_stored(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")
    src = tmp_path / "f.bin"
    src.write_bytes(b"payload")
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(OSError, match="not " + wrong):
        store.put(src, sha256=wrong)
    assert not store.exists(wrong)
    assert store.put(src, sha256=hashlib.sha256(b"payload").hexdigest()) == store.put(src)
