"""The project's one database and its blob store, shared by every stage: the engine (migrated on
first use), the tables of every stage (`schema`), the Alembic migrations, the content-addressed
artifact store, leases, and `gc`. It sits below every stage and imports none of them; each
stage's queries live with that stage (runs in `training.tracking`, the registry's in `registry/`,
the prediction log and alerts in `monitor/`, rollouts in `update/`)."""

from shipyard.store.artifacts import ArtifactStore, open_store
from shipyard.store.engine import dispose_engines, engine_for

__all__ = ["ArtifactStore", "dispose_engines", "engine_for", "open_store"]
