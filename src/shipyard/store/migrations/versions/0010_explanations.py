"""Explanations, kept apart from the prediction log (they never enter drift windows): one row per
explained request, with its method, parameters, outputs and the attributions.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "explanations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("summary", sa.JSON, nullable=False),
        sa.Column("attributions", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_explanations_request", "explanations", ["request_id"])
    op.create_index("ix_explanations_model_ts", "explanations", ["model", "ts"])


def downgrade() -> None:
    op.drop_index("ix_explanations_model_ts", "explanations")
    op.drop_index("ix_explanations_request", "explanations")
    op.drop_table("explanations")
