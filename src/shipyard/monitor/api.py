"""`Monitor(registry)`: the Python face of `shipyard monitor`. Everything here reads the state the
evaluator persisted in the registry's database, so it sees every worker and replica."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from shipyard.errors import NotFound
from shipyard.monitor import evaluator as evaluator_mod
from shipyard.registry import leases
from shipyard.registry.schema import alerts


class Monitor:
    """`status(name)` → the dict `shipyard monitor status NAME --json` prints."""

    def __init__(self, registry: Any = None, *, settings: Any = None) -> None:
        if registry is None:
            from shipyard.registry import Registry

            registry = Registry(settings=settings)
        self.registry = registry
        self.engine: sa.Engine = registry.engine

    def _model(self, name: str) -> Any:
        model = next((m for m in self.registry.list() if m.name == name), None)
        if model is None:
            raise NotFound(f"no model {name!r} (see `shipyard models list`)")
        return model

    def status(self, name: str) -> dict[str, Any]:
        """Per evaluated version: drift (input / prediction / confidence → score, p_value,
        threshold, alarm), accuracy (realised, estimated, n_labels, per class), the window;
        plus the open alerts and who evaluates. `stale` marks a state no evaluator has renewed
        for a while (no server or `monitor run` is evaluating this model)."""
        model = self._model(name)
        by_version: dict[int, list[str]] = {}
        for alias, v in model.aliases.items():
            by_version.setdefault(v, []).append(alias)
        now = time.time()
        lease = leases.current(self.engine, f"monitor:{name}", now=now)
        versions = {}
        for version, state in evaluator_mod.status(self.engine, name).items():
            versions[str(version)] = {**state, "aliases": sorted(by_version.get(version, [])),
                                      "stale": now - float(state.get("updated_at", 0)) > 30}
        return {"model": name, "evaluator": None if lease is None else
                {"holder": lease.holder, "since": lease.acquired_at, "expires_at": lease.expires_at},
                "versions": versions, "alerts": self.alerts(name)}

    def alerts(self, name: str, *, include_resolved: bool = False, limit: int = 100) -> list[dict[str, Any]]:
        """Open alerts of `name` (newest first), or all of them."""
        q = sa.select(alerts).where(alerts.c.model == name)
        if not include_resolved:
            q = q.where(alerts.c.status == "firing")
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(alerts.c.opened_at.desc()).limit(limit)).mappings().all()
        return [dict(r) for r in rows]

    def windows(self, name: str, *, since: float | None = None, version: int | None = None) -> list[dict[str, Any]]:
        """Evaluated windows, oldest first (the report's and dashboard's drift history)."""
        self._model(name)
        return evaluator_mod.windows(self.engine, name, since=since, version=version)
