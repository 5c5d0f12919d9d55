"""Training runs: the run record, per-epoch metrics, and artifacts.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
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
        sa.Column("epochs_run", sa.Integer, nullable=False),
        sa.Column("best_epoch", sa.Integer),
        sa.Column("best_val_accuracy", sa.Float),
        sa.Column("test_accuracy", sa.Float),
        sa.Column("parent_run_id", sa.String(32)),
    )
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_table(
        "run_metrics",
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("step", sa.Integer, primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "run_artifacts",
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_run_artifacts_sha256", "run_artifacts", ["sha256"])


def downgrade() -> None:
    op.drop_table("run_artifacts")
    op.drop_table("run_metrics")
    op.drop_index("ix_runs_status", "runs")
    op.drop_table("runs")
