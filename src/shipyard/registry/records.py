"""What the registry returns: versions, models, history events, alias changes, traffic configs
and comparisons, each with the `to_dict` that `--json` prints; and the conflict it raises."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from shipyard._clock import as_utc
from shipyard.bundle import BundleMeta, Lineage, Variant
from shipyard.errors import ShipyardError

__all__ = ["METRIC_KEYS", "AliasChange", "Comparison", "Deployment", "Model", "ModelEvent", "ModelVersion",
           "RegistryConflict", "to_version"]


class RegistryConflict(ShipyardError):
    """The registry refuses a change that would break one of its invariants (e.g. deleting a
    version an alias points at)."""

    http_status = 409


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


@dataclass
class ModelVersion:
    """One registered version: `name@version` → a stored bundle (its packed sha256). `meta` is
    its bundle.json, as the registry stores it (`stored_meta`) read by `BundleMeta` on first use."""

    name: str
    version: int
    bundle_sha256: str
    size_bytes: int
    created_at: datetime
    run_id: str | None = None
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    stored_meta: dict[str, Any] = field(default_factory=dict, repr=False)
    aliases: list[str] = field(default_factory=list)

    @cached_property
    def meta(self) -> BundleMeta:
        return BundleMeta.from_dict(self.stored_meta, where=f"{self.ref}: the bundle.json the registry stores")

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def variant(self) -> str | None:
        """The variant the bundle ships (e.g. fp32 or int8)."""
        return self.meta.variant

    @property
    def variants(self) -> tuple[Variant, ...]:
        return self.meta.variants

    @property
    def metrics(self) -> dict[str, Any]:
        """The measurements of the shipped variant (accuracy, size, latency, throughput)."""
        for v in self.variants:
            if v.name == self.variant:
                return {k: x for k, x in v.to_dict().items() if k != "name"}
        return {}

    @property
    def lineage(self) -> Lineage:
        return self.meta.lineage

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
            d["meta"] = self.meta.to_dict()
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
        names = list(dict.fromkeys([v.name for v in a.variants + b.variants if v.name]))
        by_name = [{v.name: v.to_dict() for v in x.variants} for x in (a, b)]
        la, lb = a.lineage.to_dict(), b.lineage.to_dict()
        lineage = {k: [la.get(k), lb.get(k)] for k in sorted(set(la) | set(lb))}
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


def to_version(row: Any, held: list[str]) -> ModelVersion:
    """A `model_versions` row (and the aliases that point at it) as a ModelVersion."""
    return ModelVersion(
        name=row["name"], version=row["version"], bundle_sha256=row["bundle_sha256"],
        size_bytes=row["size_bytes"], created_at=as_utc(row["created_at"]),
        run_id=row["run_id"], description=row["description"], tags=dict(row["tags"] or {}),
        stored_meta=dict(row["meta"] or {}), aliases=held,
    )

