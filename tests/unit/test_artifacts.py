import hashlib
from pathlib import Path

import pytest

from shipyard.errors import NotFound, ShipyardError
from shipyard.store.artifacts import ArtifactStore


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


def test_open_store_names_the_backend(tmp_path: Path) -> None:
    from shipyard.errors import ConfigError
    from shipyard.settings import Settings
    from shipyard.store.artifacts import S3ArtifactStore, open_store

    assert open_store(Settings(home=tmp_path)).root == tmp_path / "artifacts"
    assert open_store(Settings(home=tmp_path, artifacts=f"file://{tmp_path}/shared")).root == tmp_path / "shared"
    assert open_store(Settings(home=tmp_path, artifacts=str(tmp_path / "plain"))).root == tmp_path / "plain"
    s3 = open_store(Settings(home=tmp_path, artifacts="s3://bucket/some/prefix/"))
    assert isinstance(s3, S3ArtifactStore)
    assert s3.where("ab" * 32) == f"s3://bucket/some/prefix/sha256/ab/{'ab' * 32}"
    assert s3.root == tmp_path / "cache" / "artifacts"  # the local cache by sha256
    for bad in ("s3://", "ftp://host/x", "file://otherhost/x"):
        with pytest.raises(ConfigError, match="artifacts"):
            open_store(Settings(home=tmp_path, artifacts=bad))


def test_settings_read_the_store_from_the_environment() -> None:
    from shipyard.settings import Settings

    s = Settings.from_env({"SHIPYARD_ARTIFACTS": "s3://b/p", "SHIPYARD_S3_ENDPOINT_URL": "http://127.0.0.1:9000"})
    assert (s.artifacts, s.s3_endpoint_url) == ("s3://b/p", "http://127.0.0.1:9000")


def test_a_file_url_is_percent_decoded_and_a_relative_path_resolved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shipyard.settings import Settings
    from shipyard.store.artifacts import open_store

    assert open_store(Settings(home=tmp_path, artifacts=f"file://{tmp_path}/with%20space")).root == \
        tmp_path / "with space"
    monkeypatch.chdir(tmp_path)
    assert open_store(Settings(home=tmp_path, artifacts="rel/store")).root == tmp_path / "rel" / "store"
