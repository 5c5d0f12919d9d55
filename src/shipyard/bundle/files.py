"""The bundle's files: the deployable unit and the contract between training and production.

A folder (or a `.tar.gz` of one) holding `model.onnx`, `bundle.json` (read and written only by
`BundleMeta`, `shipyard.bundle.meta`), optionally `weights.pt` and `reference.npz`, and
`MANIFEST.sha256` with a checksum for every other file. Loading verifies the manifest first: a
changed, missing or extra file is refused with a message that names it. No torch here: the
server and the registry load bundles."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from shipyard.bundle.meta import META, SCHEMA_VERSION, BundleError, BundleMeta
from shipyard.data.preprocess import PreprocessSpec

MANIFEST = "MANIFEST.sha256"
MODEL = "model.onnx"
WEIGHTS = "weights.pt"
REFERENCE = "reference.npz"
EXPLAIN = "explain.onnx"  # the gradient graph (`shipyard.attribution.gradient`): optional
#: files a bundle may hold besides the manifest
KNOWN_FILES = (MODEL, META, WEIGHTS, REFERENCE, EXPLAIN)
_MAX_MEMBER_BYTES = 2 << 30
#: the temporary folders `Bundle.load` unpacks archives into (each removed with its Bundle)
TEMP_PREFIX = "shipyard-bundle-"


def _remove_unpacked(folder: Path, pid: int) -> None:
    """A Bundle's finalizer: only the process that unpacked it removes it (a forked child
    exiting must not take its parent's copy)."""
    if os.getpid() == pid:
        shutil.rmtree(folder, ignore_errors=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Bundle:
    """A verified bundle folder and its metadata (`bundle.json`).

    A `.tar.gz` opened without `unpack_to` is unpacked into a temporary folder that the Bundle
    owns: it is removed by `close()` (or leaving `with Bundle.load(...) as b:`), else when the
    Bundle is garbage-collected or the process exits, so no unpacked copy outlives its use."""

    path: Path
    meta: BundleMeta
    _reference: dict[str, np.ndarray] | None = field(default=None, repr=False)
    _cleanup: weakref.finalize | None = field(default=None, repr=False, compare=False)

    # -- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, *, unpack_to: Path | None = None) -> Bundle:
        """Open and verify a bundle folder or `.tar.gz` (unpacked into `unpack_to`, or a
        temporary folder this Bundle owns and removes; also when loading fails)."""
        path = Path(path)
        owned = None
        if path.is_file():
            dest = unpack_to or Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
            owned = dest if unpack_to is None else None
            try:
                unpack(path, dest)
                verify(dest)
                meta = BundleMeta.load(dest / META)
            except BaseException:
                if owned is not None:
                    shutil.rmtree(owned, ignore_errors=True)
                raise
            b = cls(dest, meta)
            if owned is not None:
                b._cleanup = weakref.finalize(b, _remove_unpacked, owned, os.getpid())
            return b
        if not path.is_dir():
            raise BundleError(f"{path}: no such bundle (expected a folder or a .tar.gz)")
        verify(path)
        return cls(path, BundleMeta.load(path / META))

    def close(self) -> None:
        """Remove the temporary folder a `.tar.gz` was unpacked into (if this Bundle made one);
        `path` is gone afterwards. Nothing happens for a folder bundle."""
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- views ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def model_path(self) -> Path:
        return self.path / MODEL

    @property
    def classes(self) -> list[str]:
        return list(self.meta.classes)

    @property
    def preprocess(self) -> PreprocessSpec | None:
        return self.meta.preprocess

    @property
    def regression(self) -> bool:
        """The graph answers values `[N, len(classes)]` (one per target), not class probabilities."""
        return self.meta.task == "regression"

    @property
    def explain_path(self) -> Path | None:
        """The gradient graph explanations run Integrated Gradients on, or None (an imported model,
        or one bundled before explanations: forward-pass methods only)."""
        p = self.path / EXPLAIN
        return p if self.meta.explain is not None and p.is_file() else None

    @property
    def has_weights(self) -> bool:
        return (self.path / WEIGHTS).exists()

    @property
    def reference(self) -> dict[str, np.ndarray] | None:
        """The reference profile's arrays (`reference.npz`), or None for a bundle without one."""
        if self._reference is None and (self.path / REFERENCE).exists():
            with np.load(self.path / REFERENCE, allow_pickle=False) as f:
                self._reference = {k: f[k] for k in f.files}
        return self._reference

    def files(self) -> dict[str, int]:
        return {p.name: p.stat().st_size for p in sorted(self.path.iterdir()) if p.is_file()}

    def pack(self, dest: Path) -> Path:
        return pack(self.path, dest)


# -- writing ------------------------------------------------------------------------------
def write(folder: Path, meta: BundleMeta | dict[str, Any], files: dict[str, bytes | Path]) -> Bundle:
    """Write a bundle folder: the given files, `bundle.json`, then the manifest (last, so a
    folder without one is recognisably incomplete). `meta` is validated first (a dict is read in
    this schema version's layout): a wrong key fails here, before anything is written."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise BundleError(f"{folder}: already exists and is not empty")
    checked = BundleMeta.coerce(meta, where=str(folder / META))
    for name in files:
        if name not in KNOWN_FILES or name == META:
            raise BundleError(f"{name}: not a bundle file (allowed: {', '.join(KNOWN_FILES)})")
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            shutil.copyfile(content, folder / name)
    checked.save(folder / META)
    write_manifest(folder)
    return Bundle.load(folder)


def place(staging: Path, dest: Path, *, replace: bool = False) -> Bundle:
    """Move a finished bundle folder to `dest`. An existing non-empty `dest` is refused (we never
    delete a user's folder) unless `replace`, which callers pass only for folders they own."""
    dest = Path(dest)
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        if not replace or not (dest / MANIFEST).exists():
            raise BundleError(f"{dest}: already exists and is not empty; choose a new path")
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        shutil.rmtree(old, ignore_errors=True)
    elif dest.exists():
        dest.rmdir()
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), dest)
    return Bundle.load(dest)


def write_manifest(folder: Path) -> None:
    lines = [f"{sha256_file(p)}  {p.name}\n" for p in sorted(folder.iterdir())
             if p.is_file() and p.name != MANIFEST]
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text("".join(lines))
    os.replace(tmp, folder / MANIFEST)


# -- verifying ----------------------------------------------------------------------------
def verify(folder: Path) -> dict[str, str]:
    """Check every file against the manifest; return {file: sha256}. Raises BundleError naming
    the first file that is changed, missing, or not in the manifest."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise BundleError(f"{manifest}: missing; not a bundle, or an incomplete one")
    expected: dict[str, str] = {}
    for i, line in enumerate(manifest.read_text().splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or "/" in name or name.startswith("."):
            raise BundleError(f"{manifest}: line {i} is malformed: {line[:80]!r}")
        expected[name] = digest
    present = {p.name for p in folder.iterdir() if p.name != MANIFEST}
    for name in sorted(present - set(expected)):
        raise BundleError(f"{folder / name}: extra file not in the manifest")
    for name in (MODEL, META):
        if name not in expected:
            raise BundleError(f"{folder / name}: required file is not in the manifest")
    for name, digest in expected.items():
        p = folder / name
        if not p.is_file() or p.is_symlink():
            raise BundleError(f"{p}: missing (listed in the manifest)")
        if sha256_file(p) != digest:
            raise BundleError(f"{p}: checksum mismatch; the file was changed after bundling")
    return expected


# -- travelling as .tar.gz ----------------------------------------------------------------
def pack(folder: Path, dest: Path) -> Path:
    """A deterministic `.tar.gz` of a verified bundle folder: sorted members, zeroed times
    and owners, so the same bundle always packs to the same bytes (and sha256)."""
    verify(folder)
    dest.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(Path(folder).iterdir()):
            info = tarfile.TarInfo(p.name)
            info.size, info.mode, info.mtime = p.stat().st_size, 0o644, 0
            with open(p, "rb") as f:
                tar.addfile(info, f)
    tmp = dest.with_name(f".{dest.name}.tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue())
    os.replace(tmp, dest)
    return dest


def unpack(archive: Path, dest: Path) -> Path:
    """Unpack a bundle archive, refusing anything but plain files at the top level (no paths
    with folders or `..`, no links, no devices)."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise BundleError(f"{dest}: not empty; will not unpack a bundle over other files")
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members = tar.getmembers()
            for m in members:
                if m.issym() or m.islnk():
                    raise BundleError(f"{archive}: member {m.name!r} is a link; bundles hold plain files only")
                name = m.name[2:] if m.name.startswith("./") else m.name
                if name.startswith("/") or ".." in Path(name).parts or "/" in name.strip("/"):
                    raise BundleError(f"{archive}: member {m.name!r} has a path outside the bundle folder")
                if not m.isfile():
                    raise BundleError(f"{archive}: member {m.name!r} is not a regular file")
                if name not in (*KNOWN_FILES, MANIFEST):
                    raise BundleError(f"{archive}: member {m.name!r} is not a bundle file")
                if m.size > _MAX_MEMBER_BYTES:
                    raise BundleError(f"{archive}: member {m.name!r} is implausibly large ({m.size} bytes)")
            if len({m.name for m in members}) != len(members):
                raise BundleError(f"{archive}: a member appears more than once")
            for m in members:
                src = tar.extractfile(m)
                assert src is not None
                name = m.name[2:] if m.name.startswith("./") else m.name
                with src, open(dest / name, "wb") as out:
                    shutil.copyfileobj(src, out)
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as e:
        raise BundleError(f"{archive}: not a readable .tar.gz bundle ({e})") from None
    return dest


__all__ = ["KNOWN_FILES", "MANIFEST", "META", "MODEL", "REFERENCE", "SCHEMA_VERSION", "WEIGHTS", "Bundle",
           "BundleError", "pack", "place", "sha256_file", "unpack", "verify", "write", "write_manifest"]
