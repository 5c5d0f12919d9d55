"""Feedback changes: a label that replaces a different earlier label is recorded (who, when, from where).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("old_label", sa.Integer, nullable=False),
        sa.Column("new_label", sa.Integer, nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("client", sa.String(255)),
        sa.Column("identity", sa.String(64)),
    )
    op.create_index("ix_feedback_changes_model_request", "feedback_changes", ["model", "request_id"])


def downgrade() -> None:
    op.drop_index("ix_feedback_changes_model_request", table_name="feedback_changes")
    op.drop_table("feedback_changes")
