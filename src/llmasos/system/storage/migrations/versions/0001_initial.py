"""The initial schema: apps, keys, key-value, documents, usage, recall, summaries, core blocks, archival, audit.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("apps", sa.Column("name", sa.String(64), primary_key=True),
                    sa.Column("manifest", sa.JSON, nullable=False), sa.Column("installed_at", sa.Float, nullable=False))
    op.create_table("api_keys", sa.Column("key_id", sa.String(32), primary_key=True),
                    sa.Column("key_hash", sa.String(64), nullable=False), sa.Column("role", sa.String(16), nullable=False),
                    sa.Column("app", sa.String(64)), sa.Column("user", sa.String(128)),
                    sa.Column("created_at", sa.Float, nullable=False), sa.Column("revoked_at", sa.Float))
    op.create_table("kv", sa.Column("app", sa.String(64), primary_key=True), sa.Column("key", sa.String(512), primary_key=True),
                    sa.Column("value", sa.JSON, nullable=False), sa.Column("size", sa.Integer, nullable=False),
                    sa.Column("updated_at", sa.Float, nullable=False))
    op.create_table("documents", sa.Column("app", sa.String(64), primary_key=True),
                    sa.Column("collection", sa.String(128), primary_key=True),
                    sa.Column("doc_id", sa.String(256), primary_key=True), sa.Column("body", sa.JSON, nullable=False),
                    sa.Column("size", sa.Integer, nullable=False), sa.Column("updated_at", sa.Float, nullable=False))
    op.create_table("usage", sa.Column("app", sa.String(64), primary_key=True),
                    sa.Column("storage_bytes", sa.BigInteger, nullable=False))
    op.create_table("messages", sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                    sa.Column("app", sa.String(64), nullable=False), sa.Column("user", sa.String(128), nullable=False),
                    sa.Column("session", sa.String(128), nullable=False), sa.Column("role", sa.String(16), nullable=False),
                    sa.Column("content", sa.Text, nullable=False), sa.Column("tokens", sa.Integer, nullable=False),
                    sa.Column("embedding", sa.LargeBinary), sa.Column("created_at", sa.Float, nullable=False))
    op.create_index("ix_messages_session", "messages", ["app", "session", "id"])
    op.create_table("summaries", sa.Column("app", sa.String(64), primary_key=True),
                    sa.Column("session", sa.String(128), primary_key=True), sa.Column("text", sa.Text, nullable=False),
                    sa.Column("tokens", sa.Integer, nullable=False), sa.Column("covered_upto", sa.Integer, nullable=False),
                    sa.Column("updated_at", sa.Float, nullable=False))
    op.create_table("core_blocks", sa.Column("app", sa.String(64), primary_key=True),
                    sa.Column("user", sa.String(128), primary_key=True), sa.Column("label", sa.String(64), primary_key=True),
                    sa.Column("value", sa.Text, nullable=False), sa.Column("updated_at", sa.Float, nullable=False))
    op.create_table("archival", sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                    sa.Column("app", sa.String(64), nullable=False), sa.Column("user", sa.String(128), nullable=False),
                    sa.Column("text", sa.Text, nullable=False), sa.Column("meta", sa.JSON, nullable=False),
                    sa.Column("embedding", sa.LargeBinary, nullable=False), sa.Column("created_at", sa.Float, nullable=False))
    op.create_index("ix_archival_app", "archival", ["app", "user", "id"])
    op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                    sa.Column("time", sa.Float, nullable=False), sa.Column("principal", sa.String(200), nullable=False),
                    sa.Column("app", sa.String(64)), sa.Column("call", sa.String(64), nullable=False),
                    sa.Column("args_digest", sa.String(64), nullable=False), sa.Column("decision", sa.String(16), nullable=False),
                    sa.Column("detail", sa.Text), sa.Column("pid", sa.Integer), sa.Column("tokens", sa.Integer, nullable=False),
                    sa.Column("latency_ms", sa.Float, nullable=False), sa.Column("flags", sa.JSON))
    op.create_index("ix_audit_app_time", "audit", ["app", "time"])
    # The audit log is append-only in the database itself, not just in our code.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN RAISE EXCEPTION 'audit log is append-only'; END $$")
        op.execute("CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit "
                   "FOR EACH ROW EXECUTE FUNCTION audit_append_only()")
    else:
        for what in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_no_{what.lower()} BEFORE {what} ON audit "
                       "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_no_change ON audit")
        op.execute("DROP FUNCTION IF EXISTS audit_append_only()")
    for t in ("audit", "archival", "core_blocks", "summaries", "messages", "usage", "documents", "kv", "api_keys", "apps"):
        op.drop_table(t)
