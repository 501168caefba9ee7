"""The database: SQLite (WAL) in the data directory by default, PostgreSQL by URL. Alembic owns the schema."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_reading: contextvars.ContextVar[tuple[Database, Connection] | None] = contextvars.ContextVar("llmasos_db_reading",
                                                                                            default=None)
SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{(Path(data_dir) / 'llmasos.db').resolve()}"


class Database:
    """One SQLAlchemy engine, migrated to the newest schema on open.

    SQLite runs in WAL mode. With `synchronous=NORMAL` (the default) a commit is in the log file before it
    returns, so an acknowledged write survives `kill -9` of the process; `FULL` also fsyncs every commit, which
    survives power loss at several milliseconds per write. On PostgreSQL, `schema` puts every table in its own
    schema (created if missing), which is how several OS instances or test runs share one server.
    """

    def __init__(self, url: str, schema: str | None = None, sqlite_synchronous: str = "NORMAL") -> None:
        self.url = url
        self.schema = schema
        if schema is not None and not SCHEMA_RE.match(schema):
            raise ValueError(f"database schema {schema!r} must be a lowercase SQL identifier")
        kwargs: dict = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            kwargs["json_serializer"] = _sqlite_json
        elif schema is not None:
            kwargs["connect_args"] = {"options": f"-csearch_path={schema}"}
        if not url.startswith("sqlite"):
            # Recycling old connections instead of pinging before every checkout saves a round trip per query.
            kwargs["pool_recycle"] = 1800
        self.engine: Engine = create_engine(url, **kwargs)
        if sqlite_synchronous not in ("NORMAL", "FULL"):
            raise ValueError("sqlite_synchronous must be NORMAL or FULL")
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", lambda c, _r: _sqlite_pragmas(c, sqlite_synchronous))
        elif schema is not None:
            with self.engine.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        self.migrate()
        self.pgvector = self._enable_pgvector()

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reads: the one `reading()` holds in this context, or a fresh one from the pool."""
        shared = _reading.get()
        if shared is not None and shared[0] is self:
            yield shared[1]
            return
        with self.engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Let every read in the block share one connection: a context build makes about eight queries, and on
        PostgreSQL each checkout costs round trips."""
        if _reading.get() is not None:
            yield
            return
        with self.engine.connect() as conn:
            token = _reading.set((self, conn))
            try:
                yield
            finally:
                _reading.reset(token)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self, revision: str = "head") -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

    def has_pgvector(self) -> bool:
        if self.dialect != "postgresql":
            return False
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")).first() is not None

    def _enable_pgvector(self) -> bool:
        """Where the PostgreSQL server has pgvector, search vectors in the database: a `vector` copy of every
        embedding (`embedding_vec`) next to the portable bytes. The column depends on the server, not on a
        migration, so it is added (and back-filled) whenever the extension appears. Untested here: Debian's
        PostgreSQL on these machines has no pgvector."""
        if self.dialect != "postgresql":
            return False
        try:
            with self.engine.begin() as conn:
                if conn.execute(text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).first() is None:
                    return False
                conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
                for table in ("messages", "archival"):
                    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS embedding_vec vector"))
                    rows = conn.execute(text(f"SELECT id, embedding FROM {table} "
                                             "WHERE embedding IS NOT NULL AND embedding_vec IS NULL")).all()
                    if rows:
                        conn.execute(text(f"UPDATE {table} SET embedding_vec = CAST(:v AS vector) WHERE id = :id"),
                                     [{"id": r[0], "v": vector_literal(r[1])} for r in rows])
        except Exception as exc:  # noqa: BLE001 - no privilege to create it, or a broken install: in-process search
            log.warning("pgvector is available but could not be enabled (%s); searching vectors in-process", exc)
            return False
        return True

    def drop_schema(self) -> None:
        """Remove everything this database holds in its schema (PostgreSQL; tests clean up with it)."""
        if self.schema is None:
            raise ValueError("drop_schema needs a schema")
        with self.engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_json(value) -> str | bytes:  # noqa: ANN001
    """JSON for a SQLite JSON column. A bare number goes in as a BLOB (read back by json.loads all the same):
    as TEXT, the column's NUMERIC affinity would turn '1.0' into the integer 1 and 10**30 into a rounded REAL."""
    text = json.dumps(value)
    return text.encode() if isinstance(value, int | float) and not isinstance(value, bool) else text


def vector_literal(vec: bytes | Any) -> str:
    """pgvector's text form of an embedding (raw float32 bytes or an array)."""
    import numpy as np

    arr = np.frombuffer(vec, np.float32) if isinstance(vec, bytes | bytearray | memoryview) else np.asarray(vec)
    return "[" + ",".join(f"{x:.7g}" for x in arr.astype(np.float32)) + "]"


def _sqlite_pragmas(dbapi_conn, synchronous: str) -> None:  # noqa: ANN001
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA synchronous={synchronous}")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
    # SQLite's own lower() folds ASCII only; PostgreSQL's folds all of Unicode. Same answers on both backends
    # (recall's case-insensitive text search lowers the content).
    dbapi_conn.create_function("lower", 1, _lower, deterministic=True)


def _lower(value):  # noqa: ANN001, ANN202
    return value.lower() if isinstance(value, str) else value
