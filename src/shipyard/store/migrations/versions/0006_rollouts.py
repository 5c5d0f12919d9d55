"""Rollouts: the state of a canary rollout per model, step by step.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("name", sa.String(128), sa.ForeignKey("models.name", ondelete="CASCADE"), primary_key=True),
        sa.Column("candidate", sa.Integer, nullable=False),
        sa.Column("champion", sa.Integer, nullable=False),
        sa.Column("steps", sa.JSON, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("step_started_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("holder", sa.String(255)),
        sa.Column("reason", sa.Text),
        sa.Column("verdicts", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rollouts")
