"""Deployments: one traffic config per model (weights over its aliases, an optional shadow alias),
stored in the database so that every server, worker and replica reads the same one.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("name", sa.String(128), sa.ForeignKey("models.name", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("weights", sa.JSON, nullable=False),
        sa.Column("shadow", sa.String(64)),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("deployments")
