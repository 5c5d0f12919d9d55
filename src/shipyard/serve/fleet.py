"""What one server process serves, and how it follows the registry.

A server is started with specs: `NAME` (follow the model's deployment config: the aliases it
routes traffic to, with their weights, and its shadow), `NAME@ALIAS` (follow one alias) or
`NAME@VERSION` (pinned). `refresh` resolves the specs against the registry, loads and warms any
version not loaded yet, and only then swaps the routing table in one assignment, so a request
sees either the old table or the new one, never a gap. Versions no longer routed to are retired:
requests already holding them finish there, and they are freed once idle. A version that fails to
load or verify leaves the old table serving and is reported (log, health detail, `errors`)."""

from __future__ import annotations

import logging
import random
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shipyard.errors import NotFound, ShipyardError, UsageError
from shipyard.monitor import metrics
from shipyard.serve.runtime import ModelRuntime

if TYPE_CHECKING:
    from shipyard.registry import Registry

log = logging.getLogger("shipyard.serve")


@dataclass(frozen=True)
class Spec:
    """One served name: follow its deployment config (`alias` and `version` None), one alias,
    or one pinned version."""

    name: str
    alias: str | None = None
    version: int | None = None

    @classmethod
    def parse(cls, ref: str) -> Spec:
        name, _, sel = ref.partition("@")
        if not name:
            raise UsageError(f"{ref!r}: expected NAME, NAME@ALIAS or NAME@VERSION")
        if not sel:
            return cls(name)
        if sel.isdigit():
            return cls(name, version=int(sel))
        return cls(name, alias=sel)

    def __str__(self) -> str:
        return self.name + (f"@{self.alias}" if self.alias else f"@{self.version}" if self.version else "")


@dataclass
class Route:
    alias: str
    weight: int
    runtime: ModelRuntime


@dataclass
class Served:
    """The routing table of one model name; replaced whole, never edited in place."""

    name: str
    routes: list[Route]
    shadow: Route | None = None
    revision: int = 0
    versions: dict[str, ModelRuntime] = field(default_factory=dict)  # every routed or shadowed version

    def __post_init__(self) -> None:
        for r in [*self.routes, *([self.shadow] if self.shadow else [])]:
            self.versions[str(r.runtime.version)] = r.runtime
        live = [r for r in self.routes if r.weight > 0]
        self._single = live[0].runtime if len(live) == 1 else None
        self._cum: list[tuple[int, ModelRuntime]] = []
        total = 0
        for r in live:
            total += r.weight
            self._cum.append((total, r.runtime))
        self._total = total

    def pick(self, key: bytes | None = None) -> ModelRuntime:
        """The version for an unversioned request: by weight, at random, or by a stable hash of
        `key` so one user keeps one version (crc32: the same in every process and release)."""
        if self._single is not None:
            return self._single
        point = (zlib.crc32(key) % self._total) if key else random.randrange(self._total)
        for bound, rt in self._cum:
            if point < bound:
                return rt
        return self._cum[-1][1]

    def describe(self) -> dict[str, Any]:
        return {"routes": [{"alias": r.alias, "weight": r.weight, "version": r.runtime.version} for r in self.routes],
                "shadow": ({"alias": self.shadow.alias, "version": self.shadow.runtime.version}
                           if self.shadow else None),
                "revision": self.revision}


class Fleet:
    """Every model this process serves. `registry` is a `shipyard.registry.Registry`; `specs`
    None means every model that has a `production` alias (looked up at each refresh)."""

    def __init__(self, registry: Registry, specs: list[Spec] | None, *, threads: int = 1,
                 on_load: Callable[[ModelRuntime], None] | None = None) -> None:
        self.registry = registry
        self.specs = specs
        self.threads = threads
        self.on_load = on_load  # wires each loaded version for serving (the data plane's batcher and log)
        self.served: dict[str, Served] = {}
        self.loaded: dict[tuple[str, int], ModelRuntime] = {}  # (name, version) → runtime, shared by routes
        self.retired: list[ModelRuntime] = []
        self.errors: dict[str, str] = {}  # name → why its last refresh failed (the old table still serves)
        self.ready = False
        self.marker: int | None = None
        self.extra: dict[str, Spec] = {}  # loaded through the repository route when following production
        self.excluded: set[str] = set()  # unloaded through the repository route
        self._lock = threading.Lock()  # one refresh at a time (poller and management calls)

    # -- resolving --------------------------------------------------------------------------
    def _specs(self) -> list[Spec]:
        if self.specs is not None:
            return self.specs
        found = [Spec(n) for n in self.registry.model_names(alias="production")]
        return [s for s in found if s.name not in self.excluded and s.name not in self.extra] + \
            list(self.extra.values())

    def _wanted(self, spec: Spec) -> tuple[list[tuple[str, int, int]], tuple[str, int] | None, int]:
        """(routes as (alias, weight, version), shadow as (alias, version), config revision)."""
        reg = self.registry
        if spec.version is not None:
            mv = reg.get(f"{spec.name}@{spec.version}")
            return [(str(mv.version), 100, mv.version)], None, 0
        if spec.alias is not None:
            mv = reg.get(f"{spec.name}@{spec.alias}")
            return [(spec.alias, 100, mv.version)], None, 0
        dep = reg.traffic(spec.name)
        routes = [(alias, w, reg.get(f"{spec.name}@{alias}").version) for alias, w in dep.weights.items()]
        shadow = (dep.shadow, reg.get(f"{spec.name}@{dep.shadow}").version) if dep.shadow else None
        return routes, shadow, dep.revision

    def _runtime(self, name: str, version: int) -> ModelRuntime:
        key = (name, version)
        rt = self.loaded.get(key)
        if rt is None:
            t0 = time.perf_counter()
            try:
                bundle = self.registry.load(f"{name}@{version}")  # verifies the stored bundle
                rt = ModelRuntime(bundle, version=version, name=name, threads=self.threads)
                if self.on_load is not None:
                    self.on_load(rt)
            except Exception:
                metrics.MODEL_LOADS.labels(name, str(version), "failed").inc()
                raise
            metrics.MODEL_LOADS.labels(name, str(version), "ok").inc()
            metrics.MODEL_LOAD_SECONDS.labels(name).observe(time.perf_counter() - t0)
            log.info("loaded %s version %d (%s) in %.2f s; batching %s", name, version,
                     bundle.meta.variant, time.perf_counter() - t0,
                     rt.serving.get("batching", "off"))
        return rt

    def refresh(self) -> list[str]:
        """Bring every served name up to date with the registry; returns what changed. Safe to call
        from any thread; raises only when nothing at all could be served at start-up."""
        with self._lock:
            changed = []
            try:
                specs = self._specs()
            except ShipyardError as e:
                self.errors["*"] = str(e)
                log.error("cannot list models to serve: %s", e)
                if not self.ready:
                    raise
                return []
            self.errors.pop("*", None)
            for spec in specs:
                try:
                    if self._refresh_one(spec):
                        changed.append(spec.name)
                    self.errors.pop(spec.name, None)
                except ShipyardError as e:
                    self.errors[spec.name] = str(e)
                    log.error("cannot update %s: %s%s", spec, e,
                              " (still serving what was there)" if self.ready else "")
                    if not self.ready:
                        raise
            if self.specs is None:  # a model that lost its production alias stops being served
                gone = set(self.served) - {s.name for s in specs}
                for name in gone:
                    self._retire(self.served.pop(name))
                    changed.append(name)
            self.ready = True
            return changed

    def _refresh_one(self, spec: Spec) -> bool:
        routes, shadow, revision = self._wanted(spec)
        old = self.served.get(spec.name)
        if old is not None and old.revision == revision and \
                [(r.alias, r.weight, r.runtime.version) for r in old.routes] == routes and \
                ((old.shadow.alias, old.shadow.runtime.version) if old.shadow else None) == shadow:
            return False
        # load and warm everything first; any failure leaves `old` in place
        new_routes = [Route(a, w, self._runtime(spec.name, v)) for a, w, v in routes]
        new_shadow = Route(shadow[0], 0, self._runtime(spec.name, shadow[1])) if shadow else None
        table = Served(spec.name, new_routes, new_shadow, revision)
        for rt in table.versions.values():
            self.loaded[(spec.name, int(rt.version or 0))] = rt
        self.served[spec.name] = table  # the switch: one assignment
        log.info("%s now serves %s", spec.name, table.describe())
        if old is not None:
            self._retire(old, keep=table)
        return True

    def _retire(self, old: Served, keep: Served | None = None) -> None:
        still = set(keep.versions) if keep else set()
        for v, rt in old.versions.items():
            if v not in still:
                self.loaded.pop((old.name, int(rt.version or 0)), None)
                self.retired.append(rt)
                log.info("retiring %s version %s once its requests finish", old.name, v)

    def reap(self) -> None:
        """Free retired versions whose queues are empty (requests holding them keep them alive)."""
        keep = []
        for rt in self.retired:
            if rt.batcher is None or rt.batcher.idle:
                if rt.batcher is not None:
                    rt.batcher.close()
                log.info("freed %s version %s", rt.name, rt.version)
            else:
                keep.append(rt)
        self.retired = keep

    def check_marker(self) -> bool:
        """Whether anything changed in the registry for the served names since the last look
        (one indexed query; the poller calls this every interval)."""
        # following every production alias (no specs), a model registered meanwhile counts too:
        # None asks for every model, in the same one query
        marker = self.registry.change_marker([s.name for s in self.specs] if self.specs is not None else None)
        changed = marker != self.marker
        self.marker = marker
        return changed

    # -- routing ------------------------------------------------------------------------------
    def get(self, name: str, version: str | None = None, key: bytes | None = None) -> ModelRuntime:
        table = self.served.get(name)
        if table is None:
            served = ", ".join(sorted(self.served)) or "none"
            raise NotFound(f"unknown model {name!r} (served: {served})")
        if version is None:
            return table.pick(key)
        rt = table.versions.get(version)
        if rt is None:
            raise NotFound(f"model {name!r} has no version {version!r} here (served: "
                           f"{', '.join(sorted(table.versions))})")
        return rt

    def unload(self, name: str) -> None:
        table = self.served.pop(name, None)
        if table is None:
            raise NotFound(f"model {name!r} is not loaded")
        self._retire(table)
        if self.specs is not None:
            self.specs = [s for s in self.specs if s.name != name]
        else:
            self.extra.pop(name, None)
            self.excluded.add(name)

    def add(self, spec: Spec) -> None:
        """Serve one more spec (the repository `load` route), or re-resolve one already served."""
        with self._lock:
            if self.specs is not None:
                self.specs = [s for s in self.specs if s.name != spec.name] + [spec]
            else:
                self.excluded.discard(spec.name)
                self.extra[spec.name] = spec
            self._refresh_one(spec)
            self.errors.pop(spec.name, None)

    def export_gauges(self) -> None:
        """Set the gauges that describe this process's view (called once a second)."""
        for name, table in self.served.items():
            for r in table.routes:
                metrics.ALIAS_VERSION.labels(name, r.alias).set(r.runtime.version or 0)
                metrics.TRAFFIC_WEIGHT.labels(name, r.alias).set(r.weight / 100)  # percent → 0-1 ratio
            if table.shadow is not None:
                metrics.ALIAS_VERSION.labels(name, table.shadow.alias).set(table.shadow.runtime.version or 0)
                metrics.TRAFFIC_WEIGHT.labels(name, table.shadow.alias).set(0)
        for rt in [*self.loaded.values(), *self.retired]:
            b = rt.batcher
            if b is None:
                continue
            if rt.serving_metrics is not None:
                rt.serving_metrics.flush()
            v = str(rt.version)
            metrics.QUEUE_DEPTH.labels(rt.name, v).set(b.queued)
            metrics.BATCH_DELAY.labels(rt.name, v).set(b.delay_s)
            if b.controller is not None:
                seen = b.exported_decisions
                for action, count in b.controller.counts.items():
                    if count > seen.get(action, 0):
                        metrics.DELAY_DECISIONS.labels(rt.name, v, action).inc(count - seen.get(action, 0))
                        seen[action] = count

    def health(self) -> dict[str, Any]:
        return {"ready": self.ready, "models": {n: t.describe() for n, t in sorted(self.served.items())},
                "errors": dict(self.errors), "retiring": len(self.retired)}
