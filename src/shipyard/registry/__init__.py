"""The registry stage's storage: the one SQL database and the content-addressed artifact store."""

from shipyard.registry.artifacts import ArtifactStore
from shipyard.registry.db import engine_for

__all__ = ["ArtifactStore", "engine_for"]
