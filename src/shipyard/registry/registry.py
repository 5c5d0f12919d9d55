"""The model registry: named models, integer versions that each point at a stored bundle, aliases
(`production`, `candidate`, …) that point at versions, and the history of every change to what is
deployed (who, when, why).

Invariants, relied on by the server and by every later stage:
- a version row always points at a blob in the artifact store that is complete: blobs are written
  (atomically, content-addressed) before the one transaction that creates the row, and removed only
  after the row is gone and no other row refers to them;
- an alias only ever points at a version whose stored blob matched its sha256 (whatever the unpacked
  cache holds), whose bundle verified (manifest), and which loaded and ran in ONNX Runtime with the
  inputs, outputs and classes its signature declares: `register` and `set_alias` check all of it
  before the transaction that moves it;
- versions are allocated inside that transaction under a lock on the model's row (SQLite: the
  immediate write transaction; PostgreSQL: `SELECT … FOR UPDATE`), so concurrent registrations of
  one name get distinct consecutive numbers, and a number is never handed out twice.

The class is assembled from mixins by concept: `deployments.Deployments` (traffic split, shadow)
and `cache.BundleCache` (verified blobs, the unpacked cache, download); names and references
are checked in `refs`, the trial load is `trial.trial_load`, and what it returns is in `records`.

No torch here: the server imports this module. ONNX Runtime is imported only for trial loads."""

from __future__ import annotations

import builtins
import getpass
import logging
import os
import shutil
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shipyard._clock import as_utc, utcnow
from shipyard.bundle import Bundle, pack
from shipyard.errors import NotFound, ShipyardError, UsageError
from shipyard.registry.cache import BundleCache
from shipyard.registry.deployments import Deployments, config_str
from shipyard.registry.records import (
    AliasChange,
    Comparison,
    Model,
    ModelEvent,
    ModelVersion,
    RegistryConflict,
    to_version,
)
from shipyard.registry.refs import check_alias, check_name, check_tags, check_version, parse_ref
from shipyard.registry.trial import trial_load
from shipyard.settings import Settings
from shipyard.store.artifacts import open_store
from shipyard.store.engine import engine_for
from shipyard.store.schema import aliases, model_events, model_versions, models

__all__ = ["NOTIFY_CHANNEL", "REGISTER_STEPS", "Registry", "default_actor"]

log = logging.getLogger("shipyard.registry")


# PostgreSQL: every change to a model (alias move, traffic, new or deleted version) notifies this
# channel with the model's name, so servers follow at once instead of waiting for their next poll
NOTIFY_CHANNEL = "shipyard_registry"

#: `register`'s named steps, in order; SHIPYARD_REGISTER_CRASH_AT=<step> SIGKILLs the process there (crash tests)
REGISTER_STEPS = ("scratch", "verified", "trial-loaded", "packed", "stored", "in-transaction", "committed")
_CRASH_AT = os.environ.get("SHIPYARD_REGISTER_CRASH_AT")


def _reached(step: str) -> None:
    """Die at `step` when told to, as a power cut or `kill -9` would (one comparison otherwise)."""
    if step == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)


def default_actor() -> str:
    """`user@host`, recorded with every change."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError, ImportError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


class Registry(Deployments, BundleCache):
    """The model registry on the project's database (SQLite by default, PostgreSQL by URL) and
    its content-addressed artifact store. `url` overrides `settings.database_url`."""

    def __init__(self, url: str | None = None, *, settings: Settings | None = None,
                 actor: str | None = None) -> None:
        settings = settings or Settings.from_env()
        if url:
            settings = settings.with_(database_url=url)
        self.settings = settings
        self.url = settings.db_url
        self.actor = actor or default_actor()
        try:
            self.engine = engine_for(self.url)
        except OSError as e:
            raise ShipyardError(f"cannot open the database {self.url}: {e}") from None
        except ShipyardError as e:
            if type(e) is not ShipyardError or "\n" not in str(e):
                raise
            # drivers explain on several lines (psycopg: "… refused\n  Is the server running…?")
            raise ShipyardError(" ".join(str(e).split())) from None
        self.artifacts = open_store(settings)
        self.cache_dir = settings.home / "bundles"
        self.scratch_dir = settings.home / "tmp"

    # -- transactions ----------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """One transaction (on SQLite an immediate one: it holds the write lock throughout).
        Database failures become one clear error, never a traceback."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.DBAPIError as e:
            first = (str(e.orig).strip().splitlines() or [type(e.orig).__name__])[0]
            raise ShipyardError(f"database error on {self.engine.url.render_as_string()}: {first}") from None

    def _lock_blob(self, conn: Connection, sha: str) -> None:
        """Serialise everyone who creates or removes references to one blob. SQLite: the write
        transaction already does; PostgreSQL: a transaction-scoped advisory lock."""
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": int(sha[:15], 16)})

    def _ensure_model(self, conn: Connection, name: str, now: datetime) -> None:
        values = {"name": name, "created_at": now, "last_version": 0}
        if conn.dialect.name in ("postgresql", "sqlite"):
            if conn.dialect.name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as pg_insert
                conn.execute(pg_insert(models).values(**values).on_conflict_do_nothing(index_elements=["name"]))
            else:
                from sqlalchemy.dialects.sqlite import insert as sqlite_insert
                conn.execute(sqlite_insert(models).values(**values).on_conflict_do_nothing(index_elements=["name"]))
            return
        if conn.execute(sa.select(models.c.name).where(models.c.name == name)).first() is None:
            try:
                with conn.begin_nested():
                    conn.execute(models.insert().values(**values))
            except sa.exc.IntegrityError:
                pass  # another process created it first

    def _lock_model(self, conn: Connection, name: str) -> int:
        """Lock the model's row for the rest of the transaction; return its last version."""
        last = conn.execute(sa.select(models.c.last_version).where(models.c.name == name)
                            .with_for_update()).scalar()
        if last is None:
            raise NotFound(f"no model {name!r} (see `shipyard models list`)")
        return int(last)

    def _event(self, conn: Connection, name: str, kind: str, now: datetime, **values: Any) -> None:
        conn.execute(model_events.insert().values(name=name, kind=kind, at=now, actor=self.actor, **values))
        if conn.dialect.name == "postgresql":  # delivered at commit, to every server LISTENing
            conn.execute(sa.text("SELECT pg_notify(:channel, :name)"), {"channel": NOTIFY_CHANNEL, "name": name})


    # -- registering -------------------------------------------------------------------------
    def register(self, bundle: str | Path | Bundle, name: str | None = None, *, alias: str | None = None,
                 description: str | None = None, tags: dict[str, Any] | None = None,
                 reason: str | None = None) -> ModelVersion:
        """Store a bundle (a folder or `.tar.gz`) as the next version of `name` (default: the
        bundle's own name), optionally pointing `alias` at it. The bundle is verified and
        trial-loaded first; nothing is recorded when it fails."""
        if name is not None:
            check_name(name)
        if alias is not None:
            check_alias(alias)
        tag_values = check_tags(tags)
        src = Path(bundle.path if isinstance(bundle, Bundle) else bundle)
        scratch = self._scratch("register")
        try:
            _reached("scratch")
            b = Bundle.load(src, unpack_to=scratch / "unpacked") if src.is_file() else Bundle.load(src)
            if name is None:
                try:
                    name = check_name(b.name)
                except UsageError as e:
                    raise UsageError(f"the bundle's name cannot be a model name ({e}); pass a name") from None
            _reached("verified")  # the manifest checked out
            trial_load(b)
            _reached("trial-loaded")
            packed = pack(b.path, scratch / "bundle.tar.gz")
            _reached("packed")  # in scratch space
            sha = self._store(packed, src)
            _reached("stored")  # the blob is in the store; no row points at it yet
            size = packed.stat().st_size
            run_id = b.meta.lineage.run_id
            with self._tx() as conn:
                self._lock_blob(conn, sha)
                if not self.artifacts.exists(sha):  # removed by a concurrent delete
                    self.artifacts.put_file(packed)
                now = utcnow()
                self._ensure_model(conn, name, now)
                version = self._lock_model(conn, name) + 1
                conn.execute(models.update().where(models.c.name == name).values(last_version=version))
                conn.execute(model_versions.insert().values(
                    name=name, version=version, bundle_sha256=sha, size_bytes=size,
                    run_id=run_id, description=description, tags=tag_values, meta=b.meta.to_dict(),
                    created_at=now))
                self._event(conn, name, "register", now, version=version, to_version=version, reason=reason,
                            details={"bundle_sha256": sha, "size_bytes": size, "source": str(src),
                                     "variant": b.meta.variant, "run_id": run_id})
                if alias is not None:
                    self._move_alias(conn, name, alias, version, reason, now)
                _reached("in-transaction")  # every row written, nothing committed
            _reached("committed")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return self.get(f"{name}@{version}")

    # -- aliases -----------------------------------------------------------------------------
    def set_alias(self, name: str, alias: str, version: int | str, reason: str | None = None) -> AliasChange:
        """Point `alias` at `name@version`, after verifying its stored bundle and trial-loading it.
        Moving an alias is how a version is deployed (and rolled back)."""
        check_name(name)
        check_alias(alias)
        v = check_version(version)
        target = self.get(f"{name}@{v}")
        # the stored blob is the truth, not the unpacked cache: check it even when the cache is warm
        self._verified_blob(target)
        trial_load(self.load(target))
        with self._tx() as conn:
            self._lock_model(conn, name)
            still = conn.execute(sa.select(model_versions.c.bundle_sha256).where(
                model_versions.c.name == name, model_versions.c.version == v)).scalar()
            if still is None:
                raise NotFound(f"model {name!r} has no version {v} (it was deleted meanwhile)")
            return self._move_alias(conn, name, alias, v, reason, utcnow())

    def _move_alias(self, conn: Connection, name: str, alias: str, version: int, reason: str | None,
                    now: datetime) -> AliasChange:
        current = conn.execute(sa.select(aliases.c.version).where(
            aliases.c.name == name, aliases.c.alias == alias)).scalar()
        if current == version:
            return AliasChange(name, alias, current, version, changed=False)
        if current is None:
            conn.execute(aliases.insert().values(name=name, alias=alias, version=version, updated_at=now))
        else:
            conn.execute(aliases.update().where(aliases.c.name == name, aliases.c.alias == alias)
                         .values(version=version, updated_at=now))
        self._event(conn, name, "alias", now, version=version, alias=alias, from_version=current,
                    to_version=version, reason=reason)
        return AliasChange(name, alias, current, version, changed=True)

    def record(self, name: str, kind: str, *, version: int | None = None, reason: str | None = None,
               details: dict[str, Any] | None = None) -> None:
        """Add an event to `name`'s history for what later stages decide (retrain, gate
        verdicts, rollout steps), so `shipyard models history` tells the whole story."""
        check_name(name)
        if not kind or len(kind) > 32:
            raise UsageError(f"event kind {kind!r} must be 1..32 characters")
        with self._tx() as conn:
            self._lock_model(conn, name)
            self._event(conn, name, kind, utcnow(), version=version, reason=reason, details=details)

    def unalias(self, name: str, alias: str, reason: str | None = None) -> AliasChange:
        """Remove an alias (nothing is served under it any more)."""
        check_name(name)
        check_alias(alias)
        with self._tx() as conn:
            self._lock_model(conn, name)
            current = conn.execute(sa.select(aliases.c.version).where(
                aliases.c.name == name, aliases.c.alias == alias)).scalar()
            if current is None:
                raise NotFound(f"model {name!r} has no alias {alias!r}{self._aliases_hint(conn, name)}")
            dep = self._deployment(conn, name)
            if dep.revision and alias in dep.aliases:
                # servers would have nothing to send that share (or the shadow copy) to
                if alias in dep.weights:
                    role, fix = f"carries {dep.weights[alias]}% of the traffic of {name!r}", "ALIAS=WEIGHT …"
                else:
                    role, fix = f"is the shadow of {name!r}", "--no-shadow"
                raise RegistryConflict(
                    f"refusing to remove {name}@{alias}: alias {alias!r} {role} "
                    f"({config_str(dep.weights, dep.shadow)}); change that first with `shipyard traffic {name} {fix}`")
            conn.execute(aliases.delete().where(aliases.c.name == name, aliases.c.alias == alias))
            self._event(conn, name, "unalias", utcnow(), version=current, alias=alias, from_version=current,
                        reason=reason)
        return AliasChange(name, alias, current, None, changed=True)

    # -- following changes -------------------------------------------------------------------
    def change_marker(self, names: list[str] | None = None) -> int:
        """A number that grows whenever anything about these models changes (an alias moves or goes,
        the traffic config changes, a version is registered or deleted), for servers to poll
        cheaply: reload what they serve only when it differs from the last one they saw. 0 when
        none of them has any history.

        It is the sum over the names of each one's newest event id, not the newest id overall:
        every event is written under its model's lock, so one model's newest id only grows in
        commit order, but PostgreSQL hands out ids before commit, so across models a smaller id
        can commit after a larger one was already seen, and a plain maximum would miss it. One
        query: a lookup per name on the (name, id) index. `names` None means every model (a
        server following every `production` alias, which must see a new model appear): the same
        sum over the models table, still one query and one index lookup per model."""
        if names is None:
            newest = (sa.select(sa.func.max(model_events.c.id)).where(model_events.c.name == models.c.name)
                      .scalar_subquery())
            per_model = sa.select(newest.label("newest")).select_from(models).subquery()
            with self._tx() as conn:
                total = conn.execute(sa.select(sa.func.sum(per_model.c.newest))).scalar()
            return int(total or 0)
        wanted = list(dict.fromkeys([names] if isinstance(names, str) else names))
        if not wanted:
            return 0
        newest_each = [sa.select(sa.func.max(model_events.c.id)).where(model_events.c.name == n).scalar_subquery()
                       for n in wanted]
        with self._tx() as conn:
            row = conn.execute(sa.select(*newest_each)).one()
        return sum(int(v) for v in row if v is not None)

    # -- deleting ----------------------------------------------------------------------------
    def delete(self, ref: str, reason: str | None = None) -> ModelVersion:
        """Delete one version (`NAME@VERSION`). Refused while an alias points at it. Its stored
        bundle is removed when no other version refers to it."""
        name, sel = parse_ref(ref)
        if sel is None:
            raise UsageError(f"delete needs one version: {name}@VERSION, not {ref!r}")
        mv = self.get(ref)
        with self._tx() as conn:
            self._lock_model(conn, name)
            row = conn.execute(sa.select(model_versions.c.bundle_sha256).where(
                model_versions.c.name == name, model_versions.c.version == mv.version)).first()
            if row is None:
                raise NotFound(f"model {name!r} has no version {mv.version}")
            held = conn.execute(sa.select(aliases.c.alias).where(
                aliases.c.name == name, aliases.c.version == mv.version).order_by(aliases.c.alias)).scalars().all()
            _refuse_if_aliased(mv.ref, list(held))
            conn.execute(model_versions.delete().where(
                model_versions.c.name == name, model_versions.c.version == mv.version))
            self._event(conn, name, "delete", utcnow(), version=mv.version, from_version=mv.version,
                        reason=reason, details={"bundle_sha256": mv.bundle_sha256})
        self._collect(mv.bundle_sha256)
        return mv

    def deletable(self, ref: str) -> ModelVersion:
        """The version `ref` names, if it could be deleted now; else the error `delete` would raise."""
        mv = self.get(ref)
        _refuse_if_aliased(mv.ref, mv.aliases)
        return mv

    def _collect(self, sha: str) -> bool:
        """Remove a blob (and its unpacked cache) that no version refers to any more. Runs after
        the delete committed, under the blob's lock, so a concurrent `register` of the same bytes
        either sees the blob gone and stores it again, or keeps it referenced."""
        with self._tx() as conn:
            self._lock_blob(conn, sha)
            used = conn.execute(sa.select(sa.func.count()).select_from(model_versions).where(
                model_versions.c.bundle_sha256 == sha)).scalar()
            if used:
                return False
            try:
                self.artifacts.delete(sha)
            except ShipyardError as e:  # the version is gone already; an orphan blob harms nobody
                log.warning("could not remove the unreferenced blob %s: %s", self.artifacts.where(sha), e)
                return False
        cached = self.cache_dir / sha
        if cached.exists():
            self._discard(cached)
        return True

    # -- reading -----------------------------------------------------------------------------
    def get(self, ref: str) -> ModelVersion:
        """`NAME` (newest version), `NAME@3`, `NAME@production` → that version."""
        name, sel = parse_ref(ref)
        with self._tx() as conn:
            return self._resolve(conn, name, sel)

    def _resolve(self, conn: Connection, name: str, sel: int | str | None) -> ModelVersion:
        if not self._exists(conn, name):
            raise NotFound(f"no model {name!r} (see `shipyard models list`)")
        q = sa.select(model_versions).where(model_versions.c.name == name)
        if sel is None:
            q = q.order_by(model_versions.c.version.desc()).limit(1)
        elif isinstance(sel, int):
            q = q.where(model_versions.c.version == sel)
        else:
            v = conn.execute(sa.select(aliases.c.version).where(
                aliases.c.name == name, aliases.c.alias == sel)).scalar()
            if v is None:
                raise NotFound(f"model {name!r} has no alias {sel!r}{self._aliases_hint(conn, name)}")
            q = q.where(model_versions.c.version == v)
        row = conn.execute(q).mappings().first()
        if row is None:
            if sel is None:
                raise NotFound(f"model {name!r} has no versions")
            have = conn.execute(sa.select(model_versions.c.version).where(model_versions.c.name == name)
                                .order_by(model_versions.c.version)).scalars().all()
            raise NotFound(f"model {name!r} has no version {sel} "
                           f"(versions: {', '.join(map(str, have)) or 'none'})")
        held = conn.execute(sa.select(aliases.c.alias).where(
            aliases.c.name == name, aliases.c.version == row["version"]).order_by(aliases.c.alias)).scalars().all()
        return to_version(row, list(held))

    def _aliases_hint(self, conn: Connection, name: str) -> str:
        rows = conn.execute(sa.select(aliases.c.alias, aliases.c.version).where(aliases.c.name == name)
                            .order_by(aliases.c.alias)).all()
        return f" (aliases: {', '.join(f'{a}→{v}' for a, v in rows)})" if rows else " (it has no aliases)"

    def exists(self, name: str) -> bool:
        """Whether a model `name` exists (one primary-key lookup)."""
        with self._tx() as conn:
            return self._exists(conn, name)

    def _exists(self, conn: Connection, name: str) -> bool:
        return conn.execute(sa.select(models.c.name).where(models.c.name == name)).first() is not None

    def model_names(self, *, alias: str | None = None) -> list[str]:
        """The names of every model, or of those that have `alias` (what a server following
        `production` serves), sorted. Reads names only, never version metadata: use it, not
        `list`, wherever names or existence are all that is needed."""
        if alias is None:
            q = sa.select(models.c.name).order_by(models.c.name)
        else:
            q = sa.select(aliases.c.name).where(aliases.c.alias == alias).order_by(aliases.c.name)
        with self._tx() as conn:
            return [str(n) for n in conn.execute(q).scalars()]

    def list(self) -> list[Model]:
        """Every model with its versions (oldest first) and aliases, by name. It reads every
        version's metadata; `model_names` and `exists` answer the narrower questions."""
        with self._tx() as conn:
            return self._models(conn)

    def model(self, name: str) -> Model:
        """One model with its versions (oldest first) and aliases, as `list` holds it."""
        with self._tx() as conn:
            found = self._models(conn, name)
        if not found:
            raise NotFound(f"no model {name!r} (see `shipyard models list`)")
        return found[0]

    def _models(self, conn: Connection, name: str | None = None) -> builtins.list[Model]:
        mq = sa.select(models).order_by(models.c.name)
        vq = sa.select(model_versions).order_by(model_versions.c.name, model_versions.c.version)
        aq = sa.select(aliases).order_by(aliases.c.name, aliases.c.alias)
        if name is not None:
            mq, vq, aq = mq.where(models.c.name == name), vq.where(model_versions.c.name == name), \
                aq.where(aliases.c.name == name)
        mrows = conn.execute(mq).mappings().all()
        vrows = conn.execute(vq).mappings().all()
        arows = conn.execute(aq).mappings().all()
        found = {r["name"]: Model(name=r["name"], created_at=as_utc(r["created_at"]),
                                  description=r["description"]) for r in mrows}
        held: dict[tuple[str, int], list[str]] = {}
        for a in arows:
            found[a["name"]].aliases[a["alias"]] = a["version"]
            held.setdefault((a["name"], a["version"]), []).append(a["alias"])
        for r in vrows:
            found[r["name"]].versions.append(to_version(r, held.get((r["name"], r["version"]), [])))
        return list(found.values())

    def history(self, name: str, *, limit: int | None = None) -> builtins.list[ModelEvent]:
        """Every change to `name`, oldest first (the newest `limit` when given): registrations,
        alias moves, deletions, and what later stages record (traffic, gate verdicts)."""
        check_name(name)
        with self._tx() as conn:
            q = sa.select(model_events).where(model_events.c.name == name).order_by(model_events.c.id.desc())
            if limit is not None:
                q = q.limit(limit)
            rows = conn.execute(q).mappings().all()
            if not rows and not self._exists(conn, name):
                raise NotFound(f"no model {name!r} (see `shipyard models list`)")
        return [ModelEvent(id=r["id"], name=r["name"], kind=r["kind"], at=as_utc(r["at"]),
                           actor=r["actor"], version=r["version"], alias=r["alias"],
                           from_version=r["from_version"], to_version=r["to_version"], reason=r["reason"],
                           details=r["details"]) for r in reversed(rows)]

    def compare(self, ref_a: str, ref_b: str) -> Comparison:
        """Two versions side by side: the shipped variant and its metrics, every variant tried,
        and lineage."""
        return Comparison(self.get(ref_a), self.get(ref_b))


def _refuse_if_aliased(ref: str, held: list[str]) -> None:
    if held:
        raise RegistryConflict(
            f"refusing to delete {ref}: alias {', '.join(held)} points at it; move it to another version "
            "(`shipyard models alias`) or remove it (`shipyard models unalias`) first")

