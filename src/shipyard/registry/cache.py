"""The local side of stored bundles: each version's blob fetched and checked against its sha256,
unpacked once into a cache (HOME/bundles/<sha256>) that only ever holds complete, verified
bundles, and copied out by `download`. Work happens in scratch folders (HOME/tmp) named after
the process, so the next process can recognise and remove what a killed one left. A mixin of
`Registry`, which brings the artifact store and the version lookup."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from shipyard.bundle import MANIFEST, Bundle, BundleError, sha256_file, unpack, verify
from shipyard.errors import NotFound, ShipyardError, UsageError
from shipyard.registry.records import ModelVersion

if TYPE_CHECKING:
    from shipyard.store.artifacts import ArtifactStore

__all__ = ["BundleCache"]

_HOST = socket.gethostname()


class BundleCache:
    """`load`, `bundle_path` and `download` of `Registry`, and its scratch space."""

    if TYPE_CHECKING:  # provided by Registry
        artifacts: ArtifactStore
        cache_dir: Path
        scratch_dir: Path

        def get(self, ref: str) -> ModelVersion: ...

    # -- scratch space -----------------------------------------------------------------------
    def _scratch(self, purpose: str) -> Path:
        """A private temp folder under HOME/tmp named after this process, so leftovers of a killed
        process can be recognised and removed by the next one."""
        self._sweep_scratch()
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{purpose}~{_HOST}~{os.getpid()}~", dir=self.scratch_dir))

    def _discard(self, path: Path) -> None:
        """Remove a folder of the bundle cache: renamed into scratch space first (atomic, so no
        reader ever sees it half removed), then deleted. Gone already is fine."""
        trash = self._scratch("trash")
        with contextlib.suppress(OSError):
            os.rename(path, trash / path.name)
        shutil.rmtree(trash, ignore_errors=True)

    def _sweep_scratch(self) -> None:
        if not self.scratch_dir.is_dir():
            return
        for p in self.scratch_dir.iterdir():
            parts = p.name.split("~")
            if len(parts) == 4 and parts[1] == _HOST and parts[2].isdigit() and not _pid_alive(int(parts[2])):
                shutil.rmtree(p, ignore_errors=True)

    # -- bundles -----------------------------------------------------------------------------
    def _verified_blob(self, mv: ModelVersion) -> Path:
        """The version's stored blob as a local file (downloaded and cached when the store is
        remote), after checking it is there and matches its sha256."""
        try:
            p = self.artifacts.local(mv.bundle_sha256)
        except NotFound:
            raise BundleError(f"{mv.ref}: its stored bundle {self.artifacts.where(mv.bundle_sha256)} "
                              f"is missing from the artifact store") from None
        except ShipyardError as e:
            raise BundleError(f"{mv.ref}: {e}") from None
        if sha256_file(p) != mv.bundle_sha256:
            raise BundleError(f"{mv.ref}: its stored bundle {p} does not match its sha256 "
                              f"{mv.bundle_sha256[:12]}…; it was changed after it was registered")
        return p

    def _store(self, packed: Path, src: Path) -> str:
        """Store a packed bundle and check what the store then holds. The store keeps a blob it
        already has, so a copy changed since would otherwise be what the new version points at:
        it is replaced by these bytes, which do match the sha256."""
        sha = self.artifacts.put_file(packed)
        if not self.artifacts.repair(sha, packed):
            raise BundleError(f"{src}: storing it as {self.artifacts.where(sha)} failed: the stored copy "
                              f"does not match its sha256 {sha[:12]}…")
        return sha

    def load(self, ref: str | ModelVersion) -> Bundle:
        """The version's bundle, verified, from the unpacked cache (see `bundle_path`)."""
        mv = ref if isinstance(ref, ModelVersion) else self.get(ref)
        cached = self.cache_dir / mv.bundle_sha256
        if cached.is_dir():
            try:
                return Bundle.load(cached)
            except BundleError:  # changed on disk: rebuild it from the stored blob
                self._discard(cached)
        blob = self._verified_blob(mv)
        work = self._scratch("unpack")
        try:
            unpack(blob, work / "bundle")
            Bundle.load(work / "bundle")
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(work / "bundle", cached)  # atomic: the cache never holds half a bundle
            except OSError:
                if not cached.is_dir():  # not just another process winning the race
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return Bundle.load(cached)

    def bundle_path(self, ref: str | ModelVersion) -> Path:
        """A verified, unpacked folder of the version's bundle, cached under HOME/bundles/<sha256>."""
        return self.load(ref).path

    def download(self, ref: str, dest: str | Path) -> Bundle:
        """Unpack a verified copy of the version's bundle into `dest` (a new or empty folder).
        A new folder appears complete or not at all; an existing empty one (`.` included) is
        filled in place, its manifest last, so it is never replaced under whoever is in it."""
        mv = self.get(ref)
        dest = Path(dest).resolve()  # `.` has neither a name nor a parent to rename into
        fill = dest.exists()
        if fill and (not dest.is_dir() or any(dest.iterdir())):
            raise UsageError(f"{dest}: exists and is not empty; download into a new or empty folder")
        blob = self._verified_blob(mv)
        into = dest if fill else dest.parent
        into.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name or 'bundle'}.partial~{_HOST}~{os.getpid()}~", dir=into))
        moved: list[Path] = []
        try:
            unpack(blob, work)
            verify(work)
            if not fill:
                os.rename(work, dest)
            else:
                for p in sorted(work.iterdir(), key=lambda p: (p.name == MANIFEST, p.name)):
                    os.rename(p, dest / p.name)
                    moved.append(dest / p.name)
                work.rmdir()
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            for p in moved:
                p.unlink(missing_ok=True)
            raise
        return Bundle.load(dest)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) still answers kill(0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
