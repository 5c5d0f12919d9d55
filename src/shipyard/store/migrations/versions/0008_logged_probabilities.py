"""The prediction log keeps each prediction's class probabilities (float16, models with up to 32
classes): the softmax drift test (KS per output) needs them.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("prediction_chunks", sa.Column("probabilities", sa.LargeBinary))


def downgrade() -> None:
    with op.batch_alter_table("prediction_chunks") as batch:
        batch.drop_column("probabilities")
