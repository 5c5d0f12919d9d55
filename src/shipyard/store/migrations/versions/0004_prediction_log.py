"""The prediction log and feedback: one row per answered request (what the model said, a compact
projection of the input), the full inputs for a sample and a recent ring (in chunks, one row per
writer flush), and the true labels that
arrive later for request ids.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prediction_chunks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("ts_first", sa.Float, nullable=False),
        sa.Column("ts_last", sa.Float, nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("ids", sa.LargeBinary, nullable=False),
        sa.Column("request_ids", sa.LargeBinary, nullable=False),
        sa.Column("id_hashes", sa.LargeBinary, nullable=False),
        sa.Column("ts", sa.LargeBinary, nullable=False),
        sa.Column("predicted", sa.LargeBinary, nullable=False),
        sa.Column("confidence", sa.LargeBinary, nullable=False),
        sa.Column("sampled", sa.LargeBinary, nullable=False),
        sa.Column("projection", sa.LargeBinary),
        sa.Column("proj_dim", sa.Integer, nullable=False),
    )
    op.create_index("ix_prediction_chunks_model_ts", "prediction_chunks", ["model", "ts_last"])
    op.create_table(
        "prediction_inputs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("ts_first", sa.Float, nullable=False),
        sa.Column("ts_last", sa.Float, nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("ids", sa.LargeBinary, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("shape", sa.JSON, nullable=False),
        sa.Column("lo", sa.Float, nullable=False),
        sa.Column("hi", sa.Float, nullable=False),
    )
    op.create_index("ix_prediction_inputs_model_kind_ts", "prediction_inputs", ["model", "kind", "ts_last"])
    op.create_table(
        "feedback",
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("label", sa.Integer, nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
    )
    op.create_index("ix_feedback_model_ts", "feedback", ["model", "ts"])


def downgrade() -> None:
    op.drop_index("ix_feedback_model_ts", "feedback")
    op.drop_table("feedback")
    op.drop_index("ix_prediction_inputs_model_kind_ts", "prediction_inputs")
    op.drop_table("prediction_inputs")
    op.drop_index("ix_prediction_chunks_model_ts", "prediction_chunks")
    op.drop_table("prediction_chunks")
