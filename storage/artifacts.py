"""Content-addressed file store: a file's address is the sha256 of its bytes.

Files live at `<uri>/sha256/ab/cdef...` (the first two hex digits as a folder keep any one
folder small). Putting the same bytes twice stores them once; a stored file is never modified.
The store is a local directory; an object-store URI (s3://, gs://) is rejected with a clear
message rather than silently written to a local folder of that name.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactStore:
    """A local content-addressed store rooted at `uri`."""

    def __init__(self, uri: str | Path) -> None:
        text = str(uri)
        if "://" in text and not text.startswith("file://"):
            raise ValueError(
                f"artifact store URI {text!r}: only local paths (or file://) are supported; "
                "mount the bucket or set storage.artifacts_uri to a local folder"
            )
        self.root = Path(text.removeprefix("file://"))

    @classmethod
    def from_params(cls, storage: Any, root: str | Path) -> ArtifactStore:
        """The store at `StorageParams.artifacts_uri`, a relative path taken under `root`."""
        uri = str(storage.artifacts_uri)
        if "://" not in uri and not Path(uri).is_absolute():
            uri = str(Path(root).resolve() / uri)
        return cls(uri)

    def path_for(self, sha256: str) -> Path:
        """Where the file with this digest lives (whether or not it is stored)."""
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256 hex digest (64 lowercase hex chars): {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256[2:]

    def exists(self, sha256: str) -> bool:
        """True when a file with this digest is stored."""
        return self.path_for(sha256).is_file()

    def put(self, path: str | Path, sha256: str | None = None) -> str:
        """Store a copy of the file at `path`; return its sha256 (no-op if already stored).

        `sha256`, when the caller has just hashed the file, saves hashing it again; the copy
        is always re-hashed before it is stored, so a wrong value is caught, never stored.
        """
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"cannot store {source}: no such file")
        sha = sha256 or sha256_file(source)
        target = self.path_for(sha)
        if target.is_file():
            return sha
        target.parent.mkdir(parents=True, exist_ok=True)
        # Copy to a temp file in the same folder, re-hash, then rename: a reader never sees a
        # half-written file, and a file changed while copying is not stored under a wrong name.
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            shutil.copyfile(source, tmp)
            copied = sha256_file(tmp)
            if copied != sha:
                raise OSError(
                    f"{source} hashes to {copied}, not {sha}: it changed while being stored "
                    "or the given sha256 is wrong"
                )
            tmp.chmod(0o444)
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
        return sha

    def put_bytes(self, data: bytes) -> str:
        """Store `data`; return its sha256."""
        with tempfile.NamedTemporaryFile(delete=False) as fh:
            fh.write(data)
        try:
            return self.put(fh.name)
        finally:
            Path(fh.name).unlink(missing_ok=True)

    def get(self, sha256: str, *, verify: bool = False) -> Path:
        """Path of the stored file; with verify=True its bytes are re-hashed first."""
        target = self.path_for(sha256)
        if not target.is_file():
            raise FileNotFoundError(
                f"artifact sha256:{sha256} is not in the store at {self.root} "
                "(was it registered with another storage.artifacts_uri?)"
            )
        if verify and (actual := sha256_file(target)) != sha256:
            raise OSError(f"artifact {target} is corrupt: its bytes hash to {actual}")
        return target
