"""The one settings object. Values come from (highest first) explicit arguments such as CLI
flags, `SHIPYARD_*` environment variables, then defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shipyard.errors import ConfigError

ENV_PREFIX = "SHIPYARD_"


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path(".shipyard"))
    """Root for the database, artifacts, run folders and caches (`SHIPYARD_HOME`)."""

    database_url: str | None = None
    """SQLAlchemy URL (`SHIPYARD_DATABASE_URL`); default: SQLite at `<home>/shipyard.db`.
    PostgreSQL: `postgresql+psycopg://user@host:port/db`."""

    artifacts: str | None = None
    """Where blobs (bundles, checkpoints) live (`SHIPYARD_ARTIFACTS`): a folder path, a shared
    mount as `file:///mnt/shared/artifacts`, or object storage as `s3://bucket/prefix`. Default:
    `<home>/artifacts`. Every replica and host of a deployment must name the same store."""

    s3_endpoint_url: str | None = None
    """Endpoint of an S3-compatible server (`SHIPYARD_S3_ENDPOINT_URL`, e.g. MinIO or moto);
    default: AWS (or boto3's own `AWS_ENDPOINT_URL`). Credentials come from boto3's usual chain."""

    threads: int = field(default_factory=lambda: default_threads())
    """Intra-op threads for training (`SHIPYARD_THREADS`); recorded with every run. Default:
    up to 2. Measured on an idle 2-core machine, the canonical MLP ran a Fashion-MNIST epoch in
    1.5 s with 2 threads against 1.9-2.1 s with 1 (`train_bench.py --threads-sweep 1,2`); more
    threads buy nothing at this model size. Use 1 when serving shares the machine."""

    def __post_init__(self) -> None:
        if not isinstance(self.home, Path):
            object.__setattr__(self, "home", Path(self.home))

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'shipyard.db').resolve()}"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from the environment, then apply non-None overrides (CLI flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if home := env.get(ENV_PREFIX + "HOME"):
            values["home"] = Path(home)
        if url := env.get(ENV_PREFIX + "DATABASE_URL"):
            values["database_url"] = url
        if artifacts := env.get(ENV_PREFIX + "ARTIFACTS"):
            values["artifacts"] = artifacts
        if endpoint := env.get(ENV_PREFIX + "S3_ENDPOINT_URL"):
            values["s3_endpoint_url"] = endpoint
        if threads := env.get(ENV_PREFIX + "THREADS"):
            values["threads"] = _positive_int(ENV_PREFIX + "THREADS", threads)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "home" in values:
            values["home"] = Path(values["home"])
        settings = cls(**values)
        if settings.threads < 1:
            raise ConfigError("threads", settings.threads, "must be a positive integer")
        return settings

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def default_threads() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def _positive_int(key: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(key, raw, "not an integer") from None
    if value < 1:
        raise ConfigError(key, raw, "must be a positive integer")
    return value
