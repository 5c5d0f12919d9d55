"""A regression's labels are numbers: `feedback.value` (the true value; `label` stays 0), and a
relabelling's old and new values in `feedback_changes`.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("feedback", sa.Column("value", sa.Float))
    op.add_column("feedback_changes", sa.Column("old_value", sa.Float))
    op.add_column("feedback_changes", sa.Column("new_value", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("feedback_changes") as batch:
        batch.drop_column("new_value")
        batch.drop_column("old_value")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("value")
