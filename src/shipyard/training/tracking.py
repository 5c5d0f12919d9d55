"""Run tracking in the SQL store: the run record, per-epoch metrics and artifacts. No torch
here, so `runs list/show/compare` start fast."""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from shipyard._clock import as_utc, utcnow
from shipyard.errors import NotFound, ShipyardError, UsageError
from shipyard.settings import Settings
from shipyard.store.artifacts import open_store
from shipyard.store.engine import engine_for
from shipyard.store.schema import run_artifacts, run_metrics, runs

log = logging.getLogger("shipyard.training")

STATUSES = ("running", "finished", "failed", "interrupted")
#: a run on another host whose heartbeat is older than this is taken as dead
STALE_AFTER = timedelta(hours=1)
EPOCH_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_time_s",
              "samples_per_s")
#: a run's name and tags: what `check_name_tags` enforces
RUN_NAME_LEN, TAG_KEY_LEN, TAG_VALUE_LEN, MAX_TAGS = 128, 64, 256, 32
TAG_KEY = re.compile(rf"[A-Za-z0-9_.-]{{1,{TAG_KEY_LEN}}}")


def check_name_tags(name: str | None, tags: dict[str, str] | None) -> None:
    """Refuse (UsageError, naming what is wrong) a run name that is empty, longer than 128
    characters or not printable, and tags that are not `{key: value}` strings with keys of 1..64
    of `A-Z a-z 0-9 _ . -`, values of at most 256 characters, at most 32 of them."""
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise UsageError(f"a run name must be 1..{RUN_NAME_LEN} printable characters, got {name!r}")
        if len(name) > RUN_NAME_LEN:
            raise UsageError(f"a run name must be at most {RUN_NAME_LEN} characters, got {len(name)}")
        if not name.isprintable():
            raise UsageError(f"a run name must be printable characters (no newlines, tabs or control "
                             f"characters), got {name!r}")
    if tags is None:
        return
    if len(tags) > MAX_TAGS:
        raise UsageError(f"a run has at most {MAX_TAGS} tags, got {len(tags)}")
    for key, value in tags.items():
        if not isinstance(key, str) or not TAG_KEY.fullmatch(key):
            raise UsageError(f"tag key {key!r}: 1..{TAG_KEY_LEN} characters of A-Z a-z 0-9 _ . -")
        if not isinstance(value, str):
            raise UsageError(f"tag {key}: the value must be a string, got {type(value).__name__}")
        if len(value) > TAG_VALUE_LEN:
            raise UsageError(f"tag {key}: the value must be at most {TAG_VALUE_LEN} characters, got {len(value)}")


def parse_tags(pairs: Iterable[str] | None, option: str = "--tag") -> dict[str, str]:
    """`["team=vision", "stage=try"]` → `{"team": "vision", "stage": "try"}`, checked
    (`check_name_tags`); a pair without `=` is a UsageError naming `option`."""
    tags: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"{option} wants KEY=VALUE, got {pair!r}")
        tags[key] = value
    check_name_tags(None, tags)
    return tags


@dataclass
class Run:
    """One training run as stored; `metrics[key]` is the list of per-epoch values."""

    id: str
    status: str
    recipe: dict[str, Any]
    data_source: str
    created_at: datetime
    error: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    host: str | None = None
    pid: int | None = None
    data_fingerprint: str | None = None
    preprocess: dict[str, Any] | None = None
    library_versions: dict[str, str] | None = None
    threads: int | None = None
    device: str | None = None
    run_dir: str | None = None
    epochs_run: int = 0
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    test_accuracy: float | None = None
    parent_run_id: str | None = None
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoint: str | None = None
    """Where the best checkpoint (a torch state dict) lives in the artifact store: a path, or
    an s3:// URL (read it with `RunStore.artifacts.get_bytes`)."""

    @property
    def tensorboard_dir(self) -> str | None:
        return str(Path(self.run_dir) / "tensorboard") if self.run_dir else None

    @property
    def regression(self) -> bool:
        return "val_mae" in self.metrics

    @property
    def best_val_mae(self) -> float | None:
        """A regression's validation MAE at its best epoch (None: a classification)."""
        maes = self.metrics.get("val_mae")
        if not maes or self.best_epoch is None or self.best_epoch > len(maes):
            return None
        return maes[self.best_epoch - 1]

    @property
    def test_mae(self) -> float | None:
        maes = self.metrics.get("test_mae")
        return maes[-1] if maes else None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at or utcnow()
        return (end - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable contract (`--json`)."""
        return {
            "run_id": self.id,
            "name": self.name,
            "tags": self.tags,
            "status": self.status,
            "error": self.error,
            "best_val_accuracy": self.best_val_accuracy,
            "test_accuracy": self.test_accuracy,
            "best_val_mae": self.best_val_mae,
            "test_mae": self.test_mae,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.artifacts.get("checkpoint", {}).get("sha256"),
            "tensorboard_dir": self.tensorboard_dir,
            "run_dir": self.run_dir,
            "data_source": self.data_source,
            "data_fingerprint": self.data_fingerprint,
            "recipe": self.recipe,
            "preprocess": self.preprocess,
            "threads": self.threads,
            "device": self.device,
            "library_versions": self.library_versions,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "duration_s": self.duration_s,
            "parent_run_id": self.parent_run_id,
            "metrics": self.metrics,
            "artifacts": self.artifacts,
        }


class RunStore:
    """Reads and writes runs. Every write is one short transaction, so a crash between two
    writes leaves a consistent record."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = engine_for(settings.db_url)
        self.artifacts = open_store(settings)

    # -- writing ---------------------------------------------------------------------------
    def create(self, recipe: dict[str, Any], data_source: str, *, parent_run_id: str | None = None,
               name: str | None = None, tags: dict[str, str] | None = None) -> str:
        check_name_tags(name, tags)
        run_id = uuid.uuid4().hex[:12]
        now = utcnow()
        run_dir = (self.settings.runs_dir / run_id).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        with self.engine.begin() as conn:
            conn.execute(runs.insert().values(
                id=run_id, status="running", created_at=now, started_at=now, heartbeat_at=now,
                host=socket.gethostname(), pid=os.getpid(), recipe=recipe, data_source=data_source,
                run_dir=str(run_dir), epochs_run=0, parent_run_id=parent_run_id, name=name,
                tags=dict(tags) if tags else None,
            ))
        return run_id

    def set_name_tags(self, run_id: str, *, name: str | None = None, tags: dict[str, str] | None = None,
                      untag: Iterable[str] = (), replace: bool = False) -> Run:
        """Rename and (re)tag run `run_id` (an id, unique prefix or `latest`) and return it. `name`:
        the new name, `""` removes it, None keeps it. `tags` are merged into the run's (a key given
        replaces its value; `replace=True`: they become the whole set), then the keys in `untag`
        are removed (an unknown one is a UsageError). Checked as `check_name_tags` says; one
        transaction, so two taggers at once lose neither's tags."""
        run_id = self.resolve(run_id)
        untag = list(untag)
        check_name_tags(name or None, tags)
        with self.engine.begin() as conn:
            old = conn.execute(sa.select(runs.c.tags).where(runs.c.id == run_id)).scalar() or {}
            new = dict(tags or {}) if replace else {**old, **(tags or {})}
            if missing := [k for k in untag if k not in new]:
                raise UsageError(f"run {run_id} has no tag {', '.join(map(repr, missing))}"
                                 + (f" (its tags: {', '.join(sorted(new))})" if new else " (it has no tags)"))
            for k in untag:
                del new[k]
            if len(new) > MAX_TAGS:
                raise UsageError(f"run {run_id} would have {len(new)} tags; a run has at most {MAX_TAGS}")
            values: dict[str, Any] = {"tags": new or None}
            if name is not None:
                values["name"] = name or None
            conn.execute(runs.update().where(runs.c.id == run_id).values(**values))
        return self.get(run_id)

    def update(self, run_id: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(**values))

    def log_epoch(self, run_id: str, epoch: int, values: dict[str, float],
                  artifacts: dict[str, bytes] | None = None, **run_values: Any) -> None:
        """One epoch's metrics, its artifacts and the run's progress fields, committed together:
        a reader (or a resumed run) never sees an epoch half recorded. Blobs are written to the
        content-addressed store first; a crash before the commit leaves only an unreferenced blob."""
        now = utcnow()
        blobs = {name: (self.artifacts.put_bytes(data), len(data)) for name, data in (artifacts or {}).items()}
        with self.engine.begin() as conn:
            conn.execute(run_metrics.delete().where(
                run_metrics.c.run_id == run_id, run_metrics.c.step == epoch))
            conn.execute(run_metrics.insert(), [
                {"run_id": run_id, "key": k, "step": epoch, "value": float(v), "at": now}
                for k, v in values.items()
            ])
            for name, (sha, size) in blobs.items():
                conn.execute(run_artifacts.delete().where(
                    run_artifacts.c.run_id == run_id, run_artifacts.c.name == name))
                conn.execute(run_artifacts.insert().values(
                    run_id=run_id, name=name, sha256=sha, size_bytes=size, created_at=now))
            conn.execute(runs.update().where(runs.c.id == run_id).values(
                heartbeat_at=now, **run_values))

    def log_metrics(self, run_id: str, step: int, values: dict[str, float]) -> None:
        """Metrics that belong to no epoch's set (a regression's test MAE at the best epoch):
        written beside that step's others, replacing only the same keys."""
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(run_metrics.delete().where(run_metrics.c.run_id == run_id, run_metrics.c.step == step,
                                                    run_metrics.c.key.in_(list(values))))
            conn.execute(run_metrics.insert(), [{"run_id": run_id, "key": k, "step": step, "value": float(v),
                                                 "at": now} for k, v in values.items()])

    def put_artifact(self, run_id: str, name: str, data: bytes) -> str:
        """Store bytes in the artifact store and point the run's `name` at them. Blobs are
        immutable and never deleted here: another run or a bundle may share them."""
        sha = self.artifacts.put_bytes(data)
        with self.engine.begin() as conn:
            conn.execute(run_artifacts.delete().where(
                run_artifacts.c.run_id == run_id, run_artifacts.c.name == name))
            conn.execute(run_artifacts.insert().values(
                run_id=run_id, name=name, sha256=sha, size_bytes=len(data), created_at=utcnow()))
        return sha

    def put_tree(self, run_id: str, prefix: str, folder: Path) -> int:
        """Copy a folder's files (TensorBoard event files) into the artifact store as the run's
        `prefix/NAME` artifacts, so another host sees them too. A store that fails here costs a
        warning, not the run. Returns how many were stored."""
        stored = 0
        for f in sorted(p for p in Path(folder).glob("*") if p.is_file()):
            try:
                self.put_artifact(run_id, f"{prefix}/{f.name}", f.read_bytes())
                stored += 1
            except (OSError, ShipyardError) as e:
                log.warning("run %s: could not store %s in the artifact store: %s", run_id, f.name, e)
        return stored

    def reopen(self, run_id: str, recipe: dict[str, Any]) -> None:
        """Claim a stopped run for this process (resume). Compare-and-set on the status, so two
        processes resuming the same run cannot both train it."""
        now = utcnow()
        with self.engine.begin() as conn:
            claimed = conn.execute(
                runs.update().where(runs.c.id == run_id, runs.c.status != "running").values(
                    status="running", error=None, ended_at=None, heartbeat_at=now, recipe=recipe,
                    host=socket.gethostname(), pid=os.getpid())).rowcount
        if claimed != 1:
            raise UsageError(f"run {run_id} is already running in another process")

    # -- reading ---------------------------------------------------------------------------
    def resolve(self, ref: str) -> str:
        """A full run id from an id, a unique prefix of one, or `latest`."""
        if ref == "latest":
            with self.engine.connect() as conn:
                newest = conn.execute(sa.select(runs.c.id).order_by(runs.c.created_at.desc())
                                      .limit(1)).scalar()
            if newest is None:
                raise NotFound("no runs yet: try `shipyard train`")
            return newest
        if not ref or any(c in ref for c in "%_"):
            raise UsageError(f"not a run id: {ref!r}")
        with self.engine.connect() as conn:
            ids = conn.execute(sa.select(runs.c.id).where(runs.c.id.like(f"{ref}%")).limit(5)).scalars().all()
        if not ids:
            raise NotFound(f"no run {ref!r} (see `shipyard runs list`)")
        if len(ids) > 1:
            raise UsageError(f"run id {ref!r} is ambiguous: {', '.join(ids)}")
        return ids[0]

    def get(self, ref: str) -> Run:
        run_id = self.resolve(ref)
        self._reap(run_id)
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().one()
            mrows = conn.execute(sa.select(run_metrics).where(run_metrics.c.run_id == run_id)
                                 .order_by(run_metrics.c.step)).mappings().all()
            arows = conn.execute(sa.select(run_artifacts).where(run_artifacts.c.run_id == run_id)
                                 ).mappings().all()
        run = self._to_run(row)
        for m in mrows:
            run.metrics.setdefault(m["key"], []).append(m["value"])
        for a in arows:
            self._add_artifact(run, a)
        return run

    def list(self, *, status: str | None = None, limit: int = 50, name: str | None = None,
             tag: str | None = None) -> list[Run]:
        """Runs newest first; `name`: only those of this exact name; `tag`: `KEY` (runs with
        that tag) or `KEY=VALUE`."""
        if status is not None and status not in STATUSES:
            raise UsageError(f"unknown status {status!r}: choose {', '.join(STATUSES)}")
        self._reap()
        q = sa.select(runs).order_by(runs.c.created_at.desc()).limit(limit)
        if status:
            q = q.where(runs.c.status == status)
        if name is not None:
            q = q.where(runs.c.name == name)
        if tag is not None:
            key, sep, value = tag.partition("=")
            if not TAG_KEY.fullmatch(key):
                raise UsageError(f"tag filter {tag!r}: give KEY or KEY=VALUE, the key 1..{TAG_KEY_LEN} "
                                 "characters of A-Z a-z 0-9 _ . -")
            got = runs.c.tags[key].as_string()
            q = q.where(got == value if sep else got.is_not(None))
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
            ids = [r["id"] for r in rows]
            arows = conn.execute(sa.select(run_artifacts).where(run_artifacts.c.run_id.in_(ids))
                                 ).mappings().all() if ids else []
        out = [self._to_run(r) for r in rows]
        by_id = {r.id: r for r in out}
        for a in arows:
            self._add_artifact(by_id[a["run_id"]], a)
        return out

    def _add_artifact(self, run: Run, row: Any) -> None:
        run.artifacts[row["name"]] = {"sha256": row["sha256"], "size_bytes": row["size_bytes"]}
        if row["name"] == "checkpoint":
            run.checkpoint = self.artifacts.where(row["sha256"])

    def _to_run(self, row: Any) -> Run:
        d = dict(row)
        d.pop("heartbeat_at", None)
        for k in ("created_at", "started_at", "ended_at"):
            d[k] = as_utc(d[k])
        d["tags"] = dict(d.get("tags") or {})
        return Run(**d)

    def _reap(self, run_id: str | None = None) -> None:
        """Mark runs whose process vanished as failed, so nobody waits on a dead run."""
        q = sa.select(runs.c.id, runs.c.host, runs.c.pid, runs.c.heartbeat_at).where(
            runs.c.status == "running")
        if run_id:
            q = q.where(runs.c.id == run_id)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        here = socket.gethostname()
        now = utcnow()
        for rid, host, pid, beat in rows:
            if host == here:
                dead = pid is not None and not _pid_alive(pid)
                why = f"process {pid} on {host} ended without finishing the run"
            else:
                dead = beat is not None and now - as_utc(beat) > STALE_AFTER
                why = f"no heartbeat from {host} since {beat}"
            if dead:
                with self.engine.begin() as conn:
                    conn.execute(runs.update().where(runs.c.id == rid, runs.c.status == "running")
                                 .values(status="failed", error=why, ended_at=now))


#: what `monitor trace` shows of the run that trained the version that answered
LINEAGE_COLUMNS = ("id", "status", "data_source", "data_fingerprint", "recipe", "best_val_accuracy", "test_accuracy")


def run_lineage(engine: sa.Engine, run_id: str) -> dict[str, Any] | None:
    """The `LINEAGE_COLUMNS` of run `run_id`, or None when this database has no such run (the
    bundle was trained elsewhere and imported). Reads the row as stored: no reaping, no metrics."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(*(runs.c[k] for k in LINEAGE_COLUMNS)).where(runs.c.id == run_id)
                           ).mappings().first()
    return dict(row) if row is not None else None

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) still answers kill(0)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
