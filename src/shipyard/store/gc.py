"""`shipyard gc`: remove what nothing refers to any more. Blobs in the artifact store that no model
version and no run artifact names (left by a crash between storing a blob and committing its row,
by a failed delete, or by an interrupted run), and this host's caches of them (unpacked bundles,
downloaded blobs). A blob stored within the grace period is kept: its reference may still be on
its way (storing bytes that are already there renews the blob's time)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shipyard.store.artifacts import S3ArtifactStore
from shipyard.store.schema import model_versions, run_artifacts

if TYPE_CHECKING:
    from shipyard.registry import Registry

#: the default grace period, seconds: far longer than any write between a blob and its row
GRACE_S = 3600.0


@dataclass
class GcReport:
    dry_run: bool
    removed: list[dict[str, Any]] = field(default_factory=list)  # blobs: sha256, size_bytes, where
    caches_removed: list[str] = field(default_factory=list)  # this host's cache entries
    kept_young: int = 0  # unreferenced, but stored within the grace period
    referenced: int = 0

    @property
    def bytes_freed(self) -> int:
        return sum(int(b["size_bytes"]) for b in self.removed)

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "removed": self.removed, "caches_removed": self.caches_removed,
                "kept_young": self.kept_young, "referenced": self.referenced, "bytes_freed": self.bytes_freed}


def _referenced(conn: Connection, sha: str | None = None) -> set[str]:
    queries = [sa.select(model_versions.c.bundle_sha256), sa.select(run_artifacts.c.sha256)]
    if sha is not None:
        queries = [queries[0].where(model_versions.c.bundle_sha256 == sha),
                   queries[1].where(run_artifacts.c.sha256 == sha)]
    return {r for q in queries for r in conn.execute(q).scalars()}


def collect(registry: Registry, *, grace_s: float = GRACE_S, dry_run: bool = False,
            now: float | None = None) -> GcReport:
    """Remove unreferenced blobs older than `grace_s`, and this host's caches of blobs no version
    or run names. Each removal re-checks the references under the blob's lock (the lock
    `register` takes), so a concurrent registration of the same bytes either keeps its blob or
    stores it again. `registry` is a `shipyard.registry.Registry` (its database, artifact store,
    bundle cache and blob lock), passed in because the store sits below the registry."""
    now = time.time() if now is None else now
    report = GcReport(dry_run=dry_run)
    with registry.engine.connect() as conn:
        refs = _referenced(conn)
    for sha, size, stored_at in registry.artifacts.blobs():
        if sha in refs:
            report.referenced += 1
            continue
        if now - stored_at < grace_s:
            report.kept_young += 1
            continue
        if not dry_run:
            with registry._tx() as conn:
                registry._lock_blob(conn, sha)
                if _referenced(conn, sha):  # referenced meanwhile
                    report.referenced += 1
                    continue
                registry.artifacts.delete(sha)
        report.removed.append({"sha256": sha, "size_bytes": size, "where": registry.artifacts.where(sha)})
    with registry.engine.connect() as conn:
        refs = _referenced(conn)
    caches: list[Path] = []
    if registry.cache_dir.is_dir():  # unpacked bundles
        caches += [p for p in registry.cache_dir.iterdir() if len(p.name) == 64 and p.name not in refs]
    if isinstance(registry.artifacts, S3ArtifactStore) and (registry.artifacts.root / "sha256").is_dir():
        caches += [p for p in (registry.artifacts.root / "sha256").glob("*/*")  # downloaded blobs
                   if not p.name.startswith(".") and p.name not in refs]
    for p in caches:
        if now - p.stat().st_mtime < grace_s:
            continue
        if not dry_run:
            if p.is_dir():
                registry._discard(p)
            else:
                p.unlink(missing_ok=True)
        report.caches_removed.append(str(p))
    return report
