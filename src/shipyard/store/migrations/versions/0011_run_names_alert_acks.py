"""Runs get a human name and tags (`shipyard train --name --tag`, `shipyard runs tag`); alerts get
an acknowledgement (`shipyard monitor ack`): when, by whom, why. An acknowledged alert sends no
further firing notification; its resolution is still sent.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("name", sa.String(128)))
    op.add_column("runs", sa.Column("tags", sa.JSON))
    op.create_index("ix_runs_name", "runs", ["name"])
    op.add_column("alerts", sa.Column("acknowledged_at", sa.Float))
    op.add_column("alerts", sa.Column("acknowledged_by", sa.String(255)))
    op.add_column("alerts", sa.Column("ack_reason", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("ack_reason")
        batch.drop_column("acknowledged_by")
        batch.drop_column("acknowledged_at")
    op.drop_index("ix_runs_name", "runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("tags")
        batch.drop_column("name")
