"""The artifact store: a local folder of immutable blobs addressed by their sha256. Writes are
atomic (temp file + rename), so a reader never sees half a checkpoint."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from shipyard.errors import NotFound, ShipyardError

_CHUNK = 1 << 20


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        dest = self.path(sha)
        if not dest.exists():
            self._atomic_write(dest, data)
        return sha

    def put_file(self, src: Path) -> str:
        h = hashlib.sha256()
        with open(src, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        sha = h.hexdigest()
        dest = self.path(sha)
        if not dest.exists():
            self._atomic_write(dest, Path(src).read_bytes())
        return sha

    def get_bytes(self, sha256: str, *, verify: bool = True) -> bytes:
        p = self.path(sha256)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"artifact {sha256} is not in the store at {self.root}") from None
        if verify and hashlib.sha256(data).hexdigest() != sha256:
            raise ShipyardError(f"artifact {p} is corrupt: its content does not match its sha256")
        return data

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def _atomic_write(self, dest: Path, data: bytes) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
