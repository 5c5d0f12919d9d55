"""The model registry: names and references (`refs`), what it returns (`records`), the trial load
(`trial`), the `Registry` itself (`registry`: versions, aliases, history) with its traffic split
(`deployments`) and local bundle cache (`cache`). Its tables, the database and the artifact store
are in `shipyard.store`; `ArtifactStore` and `engine_for` are re-exported from there."""

from shipyard.registry.records import (
    AliasChange,
    Comparison,
    Deployment,
    Model,
    ModelEvent,
    ModelVersion,
    RegistryConflict,
)
from shipyard.registry.registry import Registry
from shipyard.store import ArtifactStore, engine_for

__all__ = ["AliasChange", "ArtifactStore", "Comparison", "Deployment", "Model", "ModelEvent", "ModelVersion",
           "Registry", "RegistryConflict", "engine_for"]
