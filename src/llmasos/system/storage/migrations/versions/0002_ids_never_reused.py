"""Ids are never reused (SQLite AUTOINCREMENT on messages, archival and audit), and TRUNCATE cannot empty the
audit log on PostgreSQL.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("messages", "archival", "audit")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # Row triggers do not fire on TRUNCATE; a statement trigger does. (Serial ids are never reused there.)
        op.execute("CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
                   "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()")
        return
    # Without AUTOINCREMENT SQLite hands a deleted newest row's id to the next insert: an old id held by a
    # client would then name a different item. Rebuilding the table is SQLite's only way to change that.
    op.execute("DROP TRIGGER IF EXISTS audit_no_update")
    op.execute("DROP TRIGGER IF EXISTS audit_no_delete")
    for table in TABLES:
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": True}):
            pass
    for what in ("UPDATE", "DELETE"):
        op.execute(f"CREATE TRIGGER audit_no_{what.lower()} BEFORE {what} ON audit "
                   "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_no_truncate ON audit")
