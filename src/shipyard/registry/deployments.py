"""Deployments: how each model's traffic is split over its aliases (weights in whole percents)
plus an optional shadow alias, stored as one row per model with a revision that grows by one
with every change. Servers route by alias, so moving an alias changes the version behind a
share without touching this config. A mixin of `Registry`, which brings the transaction, the
model lock and the history."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shipyard._clock import as_utc, utcnow
from shipyard.errors import NotFound, UsageError
from shipyard.registry.records import Deployment, RegistryConflict
from shipyard.registry.refs import check_alias, check_name
from shipyard.store.schema import aliases, deployments

__all__ = ["DEFAULT_WEIGHTS", "Deployments", "check_weights", "config_str"]

#: what a model with no stored traffic config serves: everything to `production`
DEFAULT_WEIGHTS: dict[str, int] = {"production": 100}


class Deployments:
    """`traffic` and `set_traffic` of `Registry`."""

    if TYPE_CHECKING:  # provided by Registry
        def _tx(self) -> AbstractContextManager[Connection]: ...
        def _lock_model(self, conn: Connection, name: str) -> int: ...
        def _event(self, conn: Connection, name: str, kind: str, now: datetime, **values: Any) -> None: ...
        def _aliases_hint(self, conn: Connection, name: str) -> str: ...
        def _exists(self, conn: Connection, name: str) -> bool: ...

    def traffic(self, name: str) -> Deployment:
        """The model's stored traffic config, or the default (everything to `production`, no
        shadow, revision 0) when none was ever set."""
        check_name(name)
        with self._tx() as conn:
            if not self._exists(conn, name):
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
        wanted = check_weights(weights)
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
                    f"{config_str(before.weights, before.shadow)}; expected revision {expect_revision}); "
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


def check_weights(weights: dict[str, int]) -> dict[str, int]:
    """{alias: whole percent 0..100} summing to 100, without the zero shares."""
    if not isinstance(weights, dict) or not weights:
        raise UsageError(f"traffic weights must be {{alias: percent}} summing to 100, got {weights!r}")
    for alias, w in weights.items():
        check_alias(alias)
        if not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= 100:
            raise UsageError(f"the weight of alias {alias!r} must be a whole percent from 0 to 100, got {w!r}")
    total = sum(weights.values())
    if total != 100:
        raise UsageError(f"traffic weights must sum to 100, got {total} ({config_str(weights, None)})")
    return {a: w for a, w in weights.items() if w > 0}


def config_str(weights: dict[str, int], shadow: str | None) -> str:
    return " ".join(f"{a}={w}" for a, w in weights.items()) + (f", shadow {shadow}" if shadow else "")

