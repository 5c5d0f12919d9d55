"""`shipyard gc`: remove artifact-store blobs nothing refers to, and this host's caches of them."""

from __future__ import annotations

from typing import Annotated

import typer

from shipyard.cli._common import JsonOpt, emit_json, err, registry, reporting, size
from shipyard.errors import UsageError


def gc(
    grace: Annotated[float, typer.Option(help="Keep unreferenced blobs stored less than this many seconds ago (their reference may still be on its way).")] = 3600.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove artifact-store blobs no model version or run refers to (left by crashes, failed
    deletes, interrupted runs) and this host's caches of them."""
    with reporting(as_json):
        from shipyard.store.gc import collect

        if grace < 0:
            raise UsageError("--grace must be ≥ 0 seconds")
        report = collect(registry(), grace_s=grace, dry_run=dry_run)
        verb = "would remove" if dry_run else "removed"
        err.print(f"{verb} {len(report.removed)} blob(s), {size(report.bytes_freed)}, and "
                  f"{len(report.caches_removed)} cache entr{'y' if len(report.caches_removed) == 1 else 'ies'}; "
                  f"kept {report.referenced} referenced and {report.kept_young} younger than {grace:g} s")
        if as_json:
            emit_json(report.to_dict())
