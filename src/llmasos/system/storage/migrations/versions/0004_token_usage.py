"""Tokens charged per app in the database: the tokens-per-minute quota holds across replicas.

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
        "token_usage",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("app", sa.String(64), nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("tokens", sa.Integer, nullable=False),
    )
    op.create_index("ix_token_usage_app_time", "token_usage", ["app", "time"])


def downgrade() -> None:
    op.drop_index("ix_token_usage_app_time", "token_usage")
    op.drop_table("token_usage")
