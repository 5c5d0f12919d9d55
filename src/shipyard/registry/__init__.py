"""The registry stage: the one SQL database, the content-addressed artifact store, and the model
registry (`Registry`) on top of them."""

from shipyard.registry.artifacts import ArtifactStore
from shipyard.registry.db import engine_for
from shipyard.registry.models import (
    AliasChange,
    Comparison,
    Deployment,
    Model,
    ModelEvent,
    ModelVersion,
    Registry,
    RegistryConflict,
)

__all__ = ["AliasChange", "ArtifactStore", "Comparison", "Deployment", "Model", "ModelEvent", "ModelVersion",
           "Registry", "RegistryConflict", "engine_for"]
