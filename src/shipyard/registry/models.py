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

No torch here: the server imports this module. ONNX Runtime is imported only for trial loads."""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shipyard._clock import as_utc, utcnow
from shipyard.bundle import MANIFEST, META, MODEL, Bundle, BundleError, pack, sha256_file, unpack, verify
from shipyard.errors import NotFound, ShipyardError, UsageError
from shipyard.registry.artifacts import open_store
from shipyard.registry.db import engine_for
from shipyard.registry.schema import ALIAS_LEN, NAME_LEN, aliases, deployments, model_events, model_versions, models
from shipyard.settings import Settings

__all__ = ["DEFAULT_WEIGHTS", "AliasChange", "Comparison", "Deployment", "Model", "ModelEvent", "ModelVersion",
           "Registry", "RegistryConflict", "check_alias", "check_name", "parse_ref", "trial_load"]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ALIAS_RE = re.compile(r"[a-z][a-z0-9_-]*")
_VERSION_RE = re.compile(r"[0-9]+")
#: `NAME@latest` is the newest version; no alias may take that name
RESERVED_ALIASES = frozenset({"latest"})
log = logging.getLogger("shipyard.registry")

#: what a model with no stored traffic config serves: everything to `production`
DEFAULT_WEIGHTS: dict[str, int] = {"production": 100}
_HOST = socket.gethostname()


# PostgreSQL: every change to a model (alias move, traffic, new or deleted version) notifies this
# channel with the model's name, so servers follow at once instead of waiting for their next poll
NOTIFY_CHANNEL = "shipyard_registry"


class RegistryConflict(ShipyardError):
    """The registry refuses a change that would break one of its invariants (e.g. deleting a
    version an alias points at)."""

    http_status = 409


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def default_actor() -> str:
    """`user@host`, recorded with every change."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError, ImportError):
        user = str(os.getuid())
    return f"{user}@{_HOST}"


# -- names and references -----------------------------------------------------------------
def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or len(name) > NAME_LEN:
        raise UsageError(f"not a model name: {name!r} (letters, digits, '.', '_' and '-', "
                         f"starting with a letter or digit, at most {NAME_LEN} characters)")
    return name


def check_alias(alias: str) -> str:
    if isinstance(alias, str) and _VERSION_RE.fullmatch(alias):
        raise UsageError(f"alias {alias!r} is a number, which would be ambiguous with version {alias}; "
                         "aliases are names such as production or candidate")
    if alias in RESERVED_ALIASES:
        raise UsageError(f"alias {alias!r} is reserved: NAME@{alias} always means the newest version")
    if not isinstance(alias, str) or not _ALIAS_RE.fullmatch(alias) or len(alias) > ALIAS_LEN:
        raise UsageError(f"not an alias: {alias!r} (lowercase letters, digits, '_' and '-', starting "
                         f"with a letter, at most {ALIAS_LEN} characters)")
    return alias


def parse_ref(ref: str) -> tuple[str, int | str | None]:
    """`NAME` or `NAME@latest` → (name, None); `NAME@3` → (name, 3); `NAME@production` →
    (name, "production"). Raises UsageError for anything else."""
    if not isinstance(ref, str) or not ref.strip():
        raise UsageError("empty model reference; expected NAME, NAME@VERSION or NAME@ALIAS")
    name, sep, sel = ref.partition("@")
    if not name:
        raise UsageError(f"model reference {ref!r} has no name; expected NAME, NAME@VERSION or NAME@ALIAS")
    check_name(name)
    if not sep or sel == "latest":
        return name, None
    if not sel or "@" in sel:
        raise UsageError(f"not a model reference: {ref!r}; expected NAME, NAME@VERSION or NAME@ALIAS")
    if _VERSION_RE.fullmatch(sel):
        version = int(sel)
        if version < 1:
            raise UsageError(f"not a model reference: {ref!r}; versions start at 1")
        return name, version
    try:
        return name, check_alias(sel)
    except UsageError as e:
        raise UsageError(f"not a model reference: {ref!r}: {e}") from None


def _version_arg(version: int | str) -> int:
    if isinstance(version, int) and not isinstance(version, bool):
        v = version
    elif isinstance(version, str) and _VERSION_RE.fullmatch(version.strip()):
        v = int(version.strip())
    else:
        raise UsageError(f"not a version number: {version!r}")
    if v < 1:
        raise UsageError(f"not a version number: {version!r}; versions start at 1")
    return v


def _check_tags(tags: dict[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (tags or {}).items():
        if not isinstance(k, str) or not k.strip():
            raise UsageError(f"tag keys must be non-empty strings, got {k!r}")
        out[k] = v if isinstance(v, str) else json.dumps(v)
    return out


# -- the trial load -----------------------------------------------------------------------
_ORT_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def trial_load(bundle: Bundle) -> None:
    """Load the bundle's `model.onnx` in ONNX Runtime and run one batch of zeros (batch size 1)
    through it. Raises BundleError naming the file when it does not load or does not run, when
    the graph's inputs and outputs are not the ones its signature declares (name, dtype, shape;
    the batch axis, -1 in the signature, may be symbolic or any size in the graph), or when its
    output is not `[batch, C]` with one column per class in `classes`."""
    import onnxruntime as ort

    path = bundle.path / MODEL
    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 4  # our error message says it; ORT's log would say it twice
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        inputs, outputs = sess.get_inputs(), sess.get_outputs()
    except Exception as e:  # ORT raises its own exception types for every kind of bad model
        raise _not_runnable(path, e) from None
    declared_in, declared_out = _declared(path, bundle.meta)
    _check_args(path, "input", declared_in, inputs)
    _check_args(path, "output", declared_out, outputs)
    classes = bundle.meta.get("classes")
    if not isinstance(classes, list) or not classes:
        raise BundleError(f"{bundle.path / META}: 'classes' must be a non-empty list of class names")
    feeds = {}
    for i in inputs:
        dtype = _ORT_DTYPES.get(i.type)
        if dtype is None:
            raise BundleError(f"{path}: input {i.name!r} has type {i.type}, which a trial run cannot feed")
        want = declared_in[i.name]["shape"] if i.name in declared_in else []
        # batch size 1; other open sizes as the signature fixes them (else 1)
        shape = [_dim(d) or (_dim(want[k]) if 0 < k < len(want) else None) or 1
                 for k, d in enumerate(i.shape or [])]
        feeds[i.name] = np.zeros(shape, dtype=dtype)
    try:
        results = sess.run(None, feeds)
    except Exception as e:
        raise _not_runnable(path, e) from None
    if not results:
        raise BundleError(f"{path}: produced no outputs on a trial batch")
    by_name = dict(zip([o.name for o in outputs], results, strict=True))
    for name, spec in declared_out.items():
        got = np.asarray(by_name[name])
        if not _shape_fits(spec["shape"], list(got.shape), result=True):
            raise BundleError(f"{path}: output {name!r} is declared in {META} with shape {spec['shape']}, "
                              f"but a trial batch of 1 gives shape {list(got.shape)}")
    out_name = next(iter(declared_out), outputs[0].name)
    got = np.asarray(by_name[out_name])
    if got.ndim != 2 or got.shape[-1] != len(classes):
        raise BundleError(f"{path}: output {out_name!r} must be probabilities [-1, C] with C = {len(classes)}, "
                          f"one column per class in {META}, but a trial batch of 1 gives shape "
                          f"{list(got.shape)}")


def _not_runnable(path: Path, e: Exception) -> BundleError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return BundleError(f"{path}: does not load and run in ONNX Runtime: {first[:300]}")


def _dim(d: Any) -> int | None:
    """A fixed size, or None for a dimension of any size (-1 in a signature, a name or None in a graph)."""
    return d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else None


def _shape_fits(declared: list[Any], actual: list[Any], *, result: bool = False) -> bool:
    """Whether a graph's shape (or, with `result`, an array's) is the declared one. A size the
    signature fixes must be that size in the graph, or open there; a size it leaves open (-1,
    e.g. the batch axis) must be open in the graph too, and may be anything in a result."""
    if len(declared) != len(actual):
        return False
    for d, a in zip(declared, actual, strict=True):
        want, have = _dim(d), _dim(a)
        if want is None and have is not None and not result:
            return False
        if want is not None and have not in (None, want):
            return False
    return True


def _dtype_name(d: Any) -> str | None:
    try:
        return np.dtype(d).name if isinstance(d, str) else None
    except TypeError:  # not a dtype numpy knows
        return None


def _shape_str(shape: list[Any]) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


def _declared(path: Path, meta: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """The signature's graph inputs (its raw inputs are preprocessed into features before the
    model, so are not graph inputs) and outputs, by name, each with a dtype and a shape."""
    signature = meta.get("signature")
    where = path.parent / META
    if not isinstance(signature, dict):
        raise BundleError(f"{where}: 'signature' must be an object with 'inputs' and 'outputs'")
    found: list[dict[str, dict[str, Any]]] = []
    for key in ("inputs", "outputs"):
        specs = signature.get(key) or []
        if not isinstance(specs, list):
            raise BundleError(f"{where}: signature {key!r} must be a list")
        out: dict[str, dict[str, Any]] = {}
        for spec in specs:
            if isinstance(spec, dict) and spec.get("kind") == "raw":
                continue
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise BundleError(f"{where}: signature {key!r} holds {spec!r}, which has no name")
            out[spec["name"]] = spec
        found.append(out)
    return found[0], found[1]


def _check_args(path: Path, kind: str, declared: dict[str, dict[str, Any]], have: list[Any]) -> None:
    """Each declared input (output) is one of the graph's, with the declared dtype and shape."""
    graph = {a.name: a for a in have}
    for name, spec in declared.items():
        arg = graph.get(name)
        if arg is None:
            raise BundleError(f"{path}: the signature in {META} names {kind} {name!r}, "
                              f"but the model's {kind}s are {list(graph)}")
        actual_dtype = _ORT_DTYPES.get(arg.type)
        actual_dtype_str = np.dtype(actual_dtype).name if actual_dtype is not None else arg.type
        declared_dtype = _dtype_name(spec.get("dtype"))
        if declared_dtype is None:
            raise BundleError(f"{path}: {kind} {name!r} is declared in {META} without a valid dtype "
                              f"({spec.get('dtype')!r}); the model's is {actual_dtype_str}")
        shape = spec.get("shape")
        actual_shape = list(arg.shape or [])
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise BundleError(f"{path}: {kind} {name!r} is declared in {META} without a valid shape "
                              f"({shape!r}); the model's is {_shape_str(actual_shape)}")
        if declared_dtype != actual_dtype_str or not _shape_fits(shape, actual_shape):
            raise BundleError(f"{path}: {kind} {name!r} is declared in {META} as {declared_dtype} {shape}, "
                              f"but the model's is {actual_dtype_str} {_shape_str(actual_shape)}")


# -- what the registry returns ------------------------------------------------------------
@dataclass
class ModelVersion:
    """One registered version: `name@version` → a stored bundle (its packed sha256)."""

    name: str
    version: int
    bundle_sha256: str
    size_bytes: int
    created_at: datetime
    run_id: str | None = None
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict, repr=False)
    aliases: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def variant(self) -> str | None:
        """The variant the bundle ships (e.g. fp32 or int8)."""
        v = self.meta.get("variant")
        return str(v) if v is not None else None

    @property
    def variants(self) -> list[dict[str, Any]]:
        v = self.meta.get("variants")
        return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []

    @property
    def metrics(self) -> dict[str, Any]:
        """The measurements of the shipped variant (accuracy, size, latency, throughput)."""
        for v in self.variants:
            if v.get("name") == self.variant:
                return {k: x for k, x in v.items() if k != "name"}
        return {}

    @property
    def lineage(self) -> dict[str, Any]:
        lin = self.meta.get("lineage")
        return lin if isinstance(lin, dict) else {}

    def to_dict(self, *, meta: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "aliases": list(self.aliases),
            "bundle_sha256": self.bundle_sha256,
            "size_bytes": self.size_bytes,
            "run_id": self.run_id,
            "description": self.description,
            "tags": dict(self.tags),
            "created_at": _iso(self.created_at),
            "variant": self.variant,
            "metrics": self.metrics,
        }
        if meta:
            d["meta"] = self.meta
        return d


@dataclass
class Model:
    """A model name with its versions (oldest first) and aliases."""

    name: str
    created_at: datetime
    description: str | None = None
    versions: list[ModelVersion] = field(default_factory=list)
    aliases: dict[str, int] = field(default_factory=dict)

    @property
    def latest(self) -> ModelVersion | None:
        return self.versions[-1] if self.versions else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "created_at": _iso(self.created_at),
            "latest_version": self.latest.version if self.latest else None,
            "aliases": dict(self.aliases),
            "versions": [v.to_dict(meta=False) for v in self.versions],
        }


@dataclass
class ModelEvent:
    """One change to a model: `register`, `alias`, `unalias`, `delete`, `traffic` (its details
    hold the new weights and shadow and the `previous` ones; later stages add gate events)."""

    id: int
    name: str
    kind: str
    at: datetime
    actor: str | None = None
    version: int | None = None
    alias: str | None = None
    from_version: int | None = None
    to_version: int | None = None
    reason: str | None = None
    details: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "kind": self.kind, "at": _iso(self.at),
                "actor": self.actor, "version": self.version, "alias": self.alias,
                "from_version": self.from_version, "to_version": self.to_version,
                "reason": self.reason, "details": self.details}


@dataclass
class AliasChange:
    """What `set_alias` / `unalias` did: `alias` of `name` moved from one version to another
    (None: it did not exist / no longer exists). `changed` is False when it already pointed there."""

    name: str
    alias: str
    from_version: int | None
    to_version: int | None
    changed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "alias": self.alias, "from_version": self.from_version,
                "to_version": self.to_version, "changed": self.changed}


@dataclass
class Deployment:
    """How a model's traffic is split over its aliases: `weights` {alias: percent} (only shares
    > 0, summing to 100) and an optional `shadow` alias that sees a copy of every request but
    whose answers are never returned. Servers route by alias, so moving an alias changes the
    version behind a share without changing this config. `revision` is 0 for the default (nothing
    stored: everything to `production`) and grows by one with every change."""

    name: str
    weights: dict[str, int]
    shadow: str | None
    revision: int
    updated_at: datetime | None

    @property
    def aliases(self) -> list[str]:
        """Every alias the config routes to: the weighted ones, then the shadow."""
        return list(self.weights) + ([self.shadow] if self.shadow and self.shadow not in self.weights else [])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weights": dict(self.weights), "shadow": self.shadow,
                "revision": self.revision, "updated_at": _iso(self.updated_at)}


#: measurements compared for the shipped variant and for every variant tried
METRIC_KEYS = ("accuracy", "size_bytes", "latency_p50_ms", "throughput_per_s")


@dataclass
class Comparison:
    """Two versions side by side: every list holds [a, b]."""

    a: ModelVersion
    b: ModelVersion

    def to_dict(self) -> dict[str, Any]:
        a, b = self.a, self.b
        metric_keys = list(METRIC_KEYS) + sorted((set(a.metrics) | set(b.metrics)) - set(METRIC_KEYS))
        names = list(dict.fromkeys([v.get("name") for v in a.variants + b.variants if v.get("name")]))
        by_name = [{v.get("name"): v for v in x.variants} for x in (a, b)]
        lineage_keys = sorted(set(a.lineage) | set(b.lineage))
        lineage = {k: [a.lineage.get(k), b.lineage.get(k)] for k in lineage_keys}
        return {
            "refs": [a.ref, b.ref],
            "versions": [a.to_dict(meta=False), b.to_dict(meta=False)],
            "chosen": [a.variant, b.variant],
            "metrics": {k: [a.metrics.get(k), b.metrics.get(k)] for k in metric_keys},
            "variants": {n: {k: [m.get(n, {}).get(k) for m in by_name] for k in METRIC_KEYS} for n in names},
            "lineage": lineage,
            "differing_lineage": [k for k, (x, y) in lineage.items()
                                  if json.dumps(x, sort_keys=True, default=str)
                                  != json.dumps(y, sort_keys=True, default=str)],
        }


# -- the registry -------------------------------------------------------------------------
class Registry:
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
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            conn.execute(insert(models).values(**values).on_conflict_do_nothing(index_elements=["name"]))
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
        tag_values = _check_tags(tags)
        src = Path(bundle.path if isinstance(bundle, Bundle) else bundle)
        scratch = self._scratch("register")
        try:
            b = Bundle.load(src, unpack_to=scratch / "unpacked") if src.is_file() else Bundle.load(src)
            if name is None:
                try:
                    name = check_name(b.name)
                except UsageError as e:
                    raise UsageError(f"the bundle's name cannot be a model name ({e}); pass a name") from None
            trial_load(b)
            packed = pack(b.path, scratch / "bundle.tar.gz")
            sha = self._store(packed, src)
            size = packed.stat().st_size
            lineage = b.meta.get("lineage") if isinstance(b.meta.get("lineage"), dict) else {}
            run_id = lineage.get("run_id")
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
                    run_id=str(run_id) if run_id is not None else None, description=description,
                    tags=tag_values, meta=b.meta, created_at=now))
                self._event(conn, name, "register", now, version=version, to_version=version, reason=reason,
                            details={"bundle_sha256": sha, "size_bytes": size, "source": str(src),
                                     "variant": b.meta.get("variant"), "run_id": run_id})
                if alias is not None:
                    self._move_alias(conn, name, alias, version, reason, now)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return self.get(f"{name}@{version}")

    # -- aliases -----------------------------------------------------------------------------
    def set_alias(self, name: str, alias: str, version: int | str, reason: str | None = None) -> AliasChange:
        """Point `alias` at `name@version`, after verifying its stored bundle and trial-loading it.
        Moving an alias is how a version is deployed (and rolled back)."""
        check_name(name)
        check_alias(alias)
        v = _version_arg(version)
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
                    f"({_config_str(dep.weights, dep.shadow)}); change that first with `shipyard traffic {name} {fix}`")
            conn.execute(aliases.delete().where(aliases.c.name == name, aliases.c.alias == alias))
            self._event(conn, name, "unalias", utcnow(), version=current, alias=alias, from_version=current,
                        reason=reason)
        return AliasChange(name, alias, current, None, changed=True)

    # -- traffic -----------------------------------------------------------------------------
    def traffic(self, name: str) -> Deployment:
        """The model's stored traffic config, or the default (everything to `production`, no
        shadow, revision 0) when none was ever set."""
        check_name(name)
        with self._tx() as conn:
            if conn.execute(sa.select(models.c.name).where(models.c.name == name)).first() is None:
                raise NotFound(f"no model {name!r} (see `shipyard models list`)")
            return self._deployment(conn, name)

    def _deployment(self, conn: Connection, name: str) -> Deployment:
        row = conn.execute(sa.select(deployments).where(deployments.c.name == name)).mappings().first()
        if row is None:
            return Deployment(name, dict(DEFAULT_WEIGHTS), None, 0, None)
        return Deployment(name, {str(k): int(v) for k, v in (row["weights"] or {}).items()}, row["shadow"],
                          int(row["revision"]), as_utc(row["updated_at"]))

    def set_traffic(self, name: str, weights: dict[str, int], shadow: str | None = None,
                    reason: str | None = None, *, expect_revision: int | None = None) -> Deployment:
        """Split the model's traffic over its aliases: `weights` {alias: percent} replaces the whole
        map (whole percents 0..100 summing to 100; zero shares are dropped) and `shadow` (None: no
        shadow) names an alias that gets a copy of every request. Every alias named must point at a
        version now, so a server never has a share with nothing behind it. Checked and written in
        one transaction under the model's lock, with a `traffic` event holding the previous config.
        Setting the stored config again changes nothing (no event, same revision).

        `expect_revision` makes it a compare-and-set: refused (RegistryConflict) when the stored
        revision is another one, so a read-modify-write (the CLI keeping the current shadow, a
        rollout step) never undoes a change made meanwhile."""
        check_name(name)
        wanted = _check_weights(weights)
        if shadow is not None:
            check_alias(shadow)
            if shadow in wanted:
                raise UsageError(f"alias {shadow!r} cannot both carry {wanted[shadow]}% of the traffic and be the "
                                 "shadow: a shadow's answers are never returned; give it 0 or pick another shadow")
        with self._tx() as conn:
            self._lock_model(conn, name)
            held = {a: v for a, v in conn.execute(sa.select(aliases.c.alias, aliases.c.version).where(
                aliases.c.name == name))}
            for alias in [*wanted, *([shadow] if shadow else [])]:
                if alias not in held:
                    raise NotFound(f"model {name!r} has no alias {alias!r}{self._aliases_hint(conn, name)}; "
                                   f"point it at a version first (`shipyard models alias {name} {alias} VERSION`)")
            before = self._deployment(conn, name)
            if expect_revision is not None and before.revision != expect_revision:
                raise RegistryConflict(
                    f"the traffic of {name!r} changed meanwhile (now revision {before.revision}: "
                    f"{_config_str(before.weights, before.shadow)}; expected revision {expect_revision}); "
                    "look again and retry")
            if before.revision and before.weights == wanted and before.shadow == shadow:
                return before
            now = utcnow()
            values = {"weights": wanted, "shadow": shadow, "revision": before.revision + 1, "updated_at": now}
            if before.revision:
                conn.execute(deployments.update().where(deployments.c.name == name).values(**values))
            else:
                conn.execute(deployments.insert().values(name=name, **values))
            self._event(conn, name, "traffic", now, reason=reason, details={
                "weights": wanted, "shadow": shadow, "revision": before.revision + 1,
                "versions": {a: held[a] for a in [*wanted, *([shadow] if shadow else [])]},
                "previous": {"weights": before.weights, "shadow": before.shadow, "revision": before.revision}})
            return Deployment(name, wanted, shadow, before.revision + 1, now)

    def change_marker(self, names: list[str]) -> int:
        """A number that grows whenever anything about these models changes (an alias moves or goes,
        the traffic config changes, a version is registered or deleted), for servers to poll
        cheaply: reload what they serve only when it differs from the last one they saw. 0 when
        none of them has any history.

        It is the sum over the names of each one's newest event id, not the newest id overall:
        every event is written under its model's lock, so one model's newest id only grows in
        commit order, but PostgreSQL hands out ids before commit, so across models a smaller id
        can commit after a larger one was already seen, and a plain maximum would miss it. One
        query: a lookup per name on the (name, id) index."""
        wanted = list(dict.fromkeys([names] if isinstance(names, str) else names))
        if not wanted:
            return 0
        newest = [sa.select(sa.func.max(model_events.c.id)).where(model_events.c.name == n).scalar_subquery()
                  for n in wanted]
        with self._tx() as conn:
            row = conn.execute(sa.select(*newest)).one()
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
        if conn.execute(sa.select(models.c.name).where(models.c.name == name)).first() is None:
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
        return _to_version(row, list(held))

    def _aliases_hint(self, conn: Connection, name: str) -> str:
        rows = conn.execute(sa.select(aliases.c.alias, aliases.c.version).where(aliases.c.name == name)
                            .order_by(aliases.c.alias)).all()
        return f" (aliases: {', '.join(f'{a}→{v}' for a, v in rows)})" if rows else " (it has no aliases)"

    def list(self) -> list[Model]:
        """Every model with its versions (oldest first) and aliases, by name."""
        with self._tx() as conn:
            mrows = conn.execute(sa.select(models).order_by(models.c.name)).mappings().all()
            vrows = conn.execute(sa.select(model_versions).order_by(
                model_versions.c.name, model_versions.c.version)).mappings().all()
            arows = conn.execute(sa.select(aliases).order_by(aliases.c.name, aliases.c.alias)).mappings().all()
        found = {r["name"]: Model(name=r["name"], created_at=as_utc(r["created_at"]),  # type: ignore[arg-type]
                                  description=r["description"]) for r in mrows}
        held: dict[tuple[str, int], list[str]] = {}
        for a in arows:
            found[a["name"]].aliases[a["alias"]] = a["version"]
            held.setdefault((a["name"], a["version"]), []).append(a["alias"])
        for r in vrows:
            found[r["name"]].versions.append(_to_version(r, held.get((r["name"], r["version"]), [])))
        return list(found.values())

    def history(self, name: str, *, limit: int | None = None) -> list[ModelEvent]:
        """Every change to `name`, oldest first (the newest `limit` when given): registrations,
        alias moves, deletions, and what later stages record (traffic, gate verdicts)."""
        check_name(name)
        with self._tx() as conn:
            q = sa.select(model_events).where(model_events.c.name == name).order_by(model_events.c.id.desc())
            if limit is not None:
                q = q.limit(limit)
            rows = conn.execute(q).mappings().all()
            if not rows and conn.execute(sa.select(models.c.name).where(models.c.name == name)).first() is None:
                raise NotFound(f"no model {name!r} (see `shipyard models list`)")
        return [ModelEvent(id=r["id"], name=r["name"], kind=r["kind"], at=as_utc(r["at"]),  # type: ignore[arg-type]
                           actor=r["actor"], version=r["version"], alias=r["alias"],
                           from_version=r["from_version"], to_version=r["to_version"], reason=r["reason"],
                           details=r["details"]) for r in reversed(rows)]

    def compare(self, ref_a: str, ref_b: str) -> Comparison:
        """Two versions side by side: the shipped variant and its metrics, every variant tried,
        and lineage."""
        return Comparison(self.get(ref_a), self.get(ref_b))

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


def _check_weights(weights: dict[str, int]) -> dict[str, int]:
    """{alias: whole percent 0..100} summing to 100, without the zero shares."""
    if not isinstance(weights, dict) or not weights:
        raise UsageError(f"traffic weights must be {{alias: percent}} summing to 100, got {weights!r}")
    for alias, w in weights.items():
        check_alias(alias)
        if not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= 100:
            raise UsageError(f"the weight of alias {alias!r} must be a whole percent from 0 to 100, got {w!r}")
    total = sum(weights.values())
    if total != 100:
        raise UsageError(f"traffic weights must sum to 100, got {total} ({_config_str(weights, None)})")
    return {a: w for a, w in weights.items() if w > 0}


def _config_str(weights: dict[str, int], shadow: str | None) -> str:
    return " ".join(f"{a}={w}" for a, w in weights.items()) + (f", shadow {shadow}" if shadow else "")


def _refuse_if_aliased(ref: str, held: list[str]) -> None:
    if held:
        raise RegistryConflict(
            f"refusing to delete {ref}: alias {', '.join(held)} points at it; move it to another version "
            "(`shipyard models alias`) or remove it (`shipyard models unalias`) first")


def _to_version(row: Any, held: list[str]) -> ModelVersion:
    return ModelVersion(
        name=row["name"], version=row["version"], bundle_sha256=row["bundle_sha256"],
        size_bytes=row["size_bytes"], created_at=as_utc(row["created_at"]),  # type: ignore[arg-type]
        run_id=row["run_id"], description=row["description"], tags=dict(row["tags"] or {}),
        meta=dict(row["meta"] or {}), aliases=held,
    )


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
