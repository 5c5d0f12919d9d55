import hashlib
from pathlib import Path

import pytest

from shipyard.errors import NotFound, ShipyardError
from shipyard.registry.artifacts import ArtifactStore


def test_content_addressed(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    sha = store.put_bytes(b"hello")
    assert sha == hashlib.sha256(b"hello").hexdigest()
    assert store.path(sha).read_bytes() == b"hello"
    assert store.put_bytes(b"hello") == sha  # idempotent
    f = tmp_path / "f.bin"
    f.write_bytes(b"hello")
    assert store.put_file(f) == sha
    assert store.get_bytes(sha) == b"hello"
    assert not list(store.path(sha).parent.glob(".tmp-*"))


def test_corruption_and_absence_are_reported(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    sha = store.put_bytes(b"payload")
    store.path(sha).write_bytes(b"tampered")
    with pytest.raises(ShipyardError, match="corrupt"):
        store.get_bytes(sha)
    store.delete(sha)
    with pytest.raises(NotFound, match=sha):
        store.get_bytes(sha)
