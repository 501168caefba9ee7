"""The OS's tables (SQLAlchemy Core). Alembic migrations in `migrations/` create and evolve them; this module
is what the code queries through. Every app-owned row carries its app name: queries always filter by it,
which is how one app's data stays invisible to another."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

apps = Table(
    "apps", metadata,
    Column("name", String(64), primary_key=True),
    Column("manifest", JSON, nullable=False),
    Column("installed_at", Float, nullable=False),
)

api_keys = Table(
    "api_keys", metadata,
    Column("key_id", String(32), primary_key=True),  # the public prefix shown by `keys list`
    Column("key_hash", String(64), nullable=False),  # sha256 of the whole key: the key itself is never stored
    Column("role", String(16), nullable=False),  # app | user | admin
    Column("app", String(64)),
    Column("user", String(128)),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)

kv = Table(
    "kv", metadata,
    Column("app", String(64), primary_key=True),
    Column("key", String(512), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("size", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)

documents = Table(
    "documents", metadata,
    Column("app", String(64), primary_key=True),
    Column("collection", String(128), primary_key=True),
    Column("doc_id", String(256), primary_key=True),
    Column("body", JSON, nullable=False),
    Column("size", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)

usage = Table(
    "usage", metadata,
    Column("app", String(64), primary_key=True),
    Column("storage_bytes", BigInteger, nullable=False),
)

messages = Table(  # recall memory: every turn of every session, in order
    "messages", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("app", String(64), nullable=False),
    Column("user", String(128), nullable=False),
    Column("session", String(128), nullable=False),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
    Column("tokens", Integer, nullable=False),
    Column("embedding", LargeBinary),
    Column("created_at", Float, nullable=False),
    Index("ix_messages_session", "app", "session", "id"),
    Index("ix_messages_vectors", "app", "session", "id", "created_at", sqlite_where=text("embedding IS NOT NULL"),
          postgresql_where=text("embedding IS NOT NULL")),
    sqlite_autoincrement=True,  # ids are never reused (migration 0002)
)

summaries = Table(  # the rolling summary of a session's turns older than the verbatim window
    "summaries", metadata,
    Column("app", String(64), primary_key=True),
    Column("session", String(128), primary_key=True),
    Column("text", Text, nullable=False),
    Column("tokens", Integer, nullable=False),
    Column("covered_upto", Integer, nullable=False),  # last message id folded in
    Column("updated_at", Float, nullable=False),
)

core_blocks = Table(  # pinned memory blocks, always in the prompt (per app, and per user of an app)
    "core_blocks", metadata,
    Column("app", String(64), primary_key=True),
    Column("user", String(128), primary_key=True),
    Column("label", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

archival = Table(  # long-term memory, searched by embedding with metadata filters
    "archival", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("app", String(64), nullable=False),
    Column("user", String(128), nullable=False),
    Column("text", Text, nullable=False),
    Column("meta", JSON, nullable=False),
    Column("embedding", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_archival_app", "app", "user", "id"),
    Index("ix_archival_vectors", "app", "id", "created_at", sqlite_where=text("embedding IS NOT NULL"),
          postgresql_where=text("embedding IS NOT NULL")),
    sqlite_autoincrement=True,
)

audit = Table(  # append-only: triggers refuse UPDATE and DELETE
    "audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False),
    Column("principal", String(200), nullable=False),
    Column("app", String(64)),
    Column("call", String(64), nullable=False),
    Column("args_digest", String(64), nullable=False),
    Column("decision", String(16), nullable=False),  # allowed | denied | failed
    Column("detail", Text),
    Column("pid", Integer),
    Column("tokens", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("flags", JSON),
    Index("ix_audit_app_time", "app", "time"),
    sqlite_autoincrement=True,
)

token_usage = Table(  # tokens charged per app, so that every replica enforces the same tokens-per-minute quota
    "token_usage", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("app", String(64), nullable=False),
    Column("time", Float, nullable=False),
    Column("tokens", Integer, nullable=False),
    Index("ix_token_usage_app_time", "app", "time"),
)
