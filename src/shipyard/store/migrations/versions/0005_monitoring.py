"""Monitoring state: leases (one evaluator per deployment), evaluated windows, the current state
per served version, alerts, and per-worker serving statistics.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_table(
        "monitor_windows",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("ts_first", sa.Float, nullable=False),
        sa.Column("ts_last", sa.Float, nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("evaluated_at", sa.Float, nullable=False),
        sa.Column("alarm", sa.Boolean, nullable=False),
        sa.Column("results", sa.JSON, nullable=False),
    )
    op.create_index("ix_monitor_windows_model_ts", "monitor_windows", ["model", "ts_last"])
    op.create_table(
        "monitor_state",
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("state", sa.JSON, nullable=False),
        sa.Column("cursor", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("opened_at", sa.Float, nullable=False),
        sa.Column("last_seen_at", sa.Float, nullable=False),
        sa.Column("resolved_at", sa.Float),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("notified", sa.String(32)),
    )
    op.create_index("ix_alerts_model_status", "alerts", ["model", "status"])
    op.create_table(
        "serving_stats",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("worker", sa.String(64), nullable=False),
        sa.Column("ts_start", sa.Float, nullable=False),
        sa.Column("ts_end", sa.Float, nullable=False),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("rejected", sa.Integer, nullable=False),
        sa.Column("latency", sa.JSON, nullable=False),
    )
    op.create_index("ix_serving_stats_model_ts", "serving_stats", ["model", "ts_end"])


def downgrade() -> None:
    op.drop_index("ix_serving_stats_model_ts", "serving_stats")
    op.drop_table("serving_stats")
    op.drop_index("ix_alerts_model_status", "alerts")
    op.drop_table("alerts")
    op.drop_table("monitor_state")
    op.drop_index("ix_monitor_windows_model_ts", "monitor_windows")
    op.drop_table("monitor_windows")
    op.drop_table("leases")
