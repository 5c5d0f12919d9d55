"""A `.tar.gz` opened with `Bundle.load` is unpacked into a temporary folder the Bundle owns:
removed by `close()`, by leaving its `with`, when the Bundle is collected, at process exit, and
at once when the archive fails verification (issue 14 §5: no unpacked copies left behind)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.bundles import make_bundle
from shipyard.bundle import Bundle, BundleError, pack
from shipyard.bundle.files import TEMP_PREFIX


@pytest.fixture
def tmpdir_(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh, empty temp dir for this test (what TMPDIR points at)."""
    fresh = tmp_path / "tmp"
    fresh.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(fresh))
    yield fresh


def _left(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith(TEMP_PREFIX))


def _archive(tmp_path: Path) -> Path:
    return pack(make_bundle(tmp_path / "packed"), tmp_path / "tiny.tar.gz")


def test_close_and_with_remove_the_unpacked_copy(tmp_path: Path, tmpdir_: Path) -> None:
    archive = _archive(tmp_path)
    b = Bundle.load(archive)
    assert b.path.parent == tmpdir_ and b.model_path.is_file() and len(_left(tmpdir_)) == 1
    b.close()
    b.close()  # twice is fine
    assert not b.path.exists() and _left(tmpdir_) == []
    with Bundle.load(archive) as c:
        assert c.model_path.is_file()
    assert _left(tmpdir_) == [] and c.meta.name == "tiny"  # the metadata outlives the folder


def test_a_bundle_no_longer_referenced_takes_its_copy_with_it(tmp_path: Path, tmpdir_: Path) -> None:
    b = Bundle.load(_archive(tmp_path))
    assert _left(tmpdir_)
    del b
    gc.collect()
    assert _left(tmpdir_) == []


def test_an_archive_that_fails_verification_leaves_nothing(tmp_path: Path, tmpdir_: Path) -> None:
    folder = make_bundle(tmp_path / "b")
    (folder / "model.onnx").write_bytes(b"changed")
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        for p in sorted(folder.iterdir()):
            tar.add(p, arcname=p.name)
    with pytest.raises(BundleError, match="checksum mismatch"):
        Bundle.load(bad)
    assert _left(tmpdir_) == []


def test_folders_and_given_destinations_are_never_removed(tmp_path: Path, tmpdir_: Path) -> None:
    folder = make_bundle(tmp_path / "b")
    Bundle.load(folder).close()
    assert (folder / "model.onnx").is_file()
    into = tmp_path / "mine"
    Bundle.load(_archive(tmp_path), unpack_to=into).close()  # the caller's folder stays the caller's
    assert (into / "model.onnx").is_file()


def test_a_process_that_exits_without_closing_leaves_nothing(tmp_path: Path) -> None:
    archive = _archive(tmp_path)
    fresh = tmp_path / "proc-tmp"
    fresh.mkdir()
    code = ("import sys; from shipyard.bundle import Bundle; "
            "KEEP = Bundle.load(sys.argv[1]); assert KEEP.model_path.is_file(); print(KEEP.path)")
    out = subprocess.run([sys.executable, "-c", code, str(archive)], env={**os.environ, "TMPDIR": str(fresh)},
                         capture_output=True, text=True, check=True, timeout=120)
    assert Path(out.stdout.strip()).parent == fresh
    assert list(fresh.iterdir()) == []
