"""The tables of the project's one database, as SQLAlchemy Core. Alembic migrations under
`migrations/versions` create and evolve them; `HEAD` names the newest migration."""

from __future__ import annotations

import sqlalchemy as sa

HEAD = "0001"

metadata = sa.MetaData()

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("recipe", sa.JSON, nullable=False),
    sa.Column("data_source", sa.String(1024), nullable=False),
    sa.Column("data_fingerprint", sa.String(64)),
    sa.Column("preprocess", sa.JSON),
    sa.Column("library_versions", sa.JSON),
    sa.Column("threads", sa.Integer),
    sa.Column("device", sa.String(32)),
    sa.Column("run_dir", sa.String(1024)),
    sa.Column("epochs_run", sa.Integer, nullable=False, default=0),
    sa.Column("best_epoch", sa.Integer),
    sa.Column("best_val_accuracy", sa.Float),
    sa.Column("test_accuracy", sa.Float),
    sa.Column("parent_run_id", sa.String(32)),
)

run_metrics = sa.Table(
    "run_metrics",
    metadata,
    sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

run_artifacts = sa.Table(
    "run_artifacts",
    metadata,
    sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
