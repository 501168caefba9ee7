"""Per-app key-value data and documents. Every query is scoped by app: another app's rows cannot be named."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, Table, and_, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from llmasos.system.errors import InvalidRequest, NotFound, QuotaExceeded
from llmasos.system.storage.db import Database
from llmasos.system.storage.tables import documents, kv, usage
from llmasos.system.validate import check_json, check_name

MAX_LIST = 1000


def upsert(conn: Connection, table: Table, values: dict, keys: list[str]) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE, on either backend."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table).values(**values)
    stmt = stmt.on_conflict_do_update(index_elements=keys, set_={k: v for k, v in values.items() if k not in keys})
    conn.execute(stmt)


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- usage -----------------------------------------------------------------------------------------
    def used_bytes(self, app: str) -> int:
        with self.db.engine.connect() as conn:
            return int(conn.execute(select(usage.c.storage_bytes).where(usage.c.app == app)).scalar() or 0)

    def _lock_usage(self, conn: Connection, app: str) -> int:
        """Create or lock the app's usage row and return its bytes. Every write of an app starts with this, so
        concurrent writers (threads, replicas) queue up here instead of losing each other's updates: PostgreSQL
        locks the row, SQLite takes its write lock before anything is read."""
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        stmt = (dialect.insert(usage).values(app=app, storage_bytes=0)
                .on_conflict_do_update(index_elements=["app"], set_={"storage_bytes": usage.c.storage_bytes})
                .returning(usage.c.storage_bytes))
        return int(conn.execute(stmt).scalar_one())

    def _charge(self, conn: Connection, app: str, current: int, delta: int, limit: int | None,
                extra_used: int) -> None:
        if delta > 0 and limit is not None and current + extra_used + delta > limit:
            raise QuotaExceeded(f"storage quota exceeded for app {app!r}: {current + extra_used} bytes used, "
                                f"{delta} more requested, limit {limit}")
        conn.execute(update(usage).where(usage.c.app == app).values(storage_bytes=max(current + delta, 0)))

    # -- key-value -------------------------------------------------------------------------------------
    def kv_set(self, app: str, key: str, value: Any, *, limit: int | None = None, extra_used: int = 0) -> None:
        check_name(key, "key", 512)
        size = check_json(value, "value") + len(key.encode())
        with self.db.engine.begin() as conn:
            current = self._lock_usage(conn, app)
            old = conn.execute(select(kv.c.size).where(kv.c.app == app, kv.c.key == key)).scalar() or 0
            self._charge(conn, app, current, size - old, limit, extra_used)
            upsert(conn, kv, {"app": app, "key": key, "value": value, "size": size, "updated_at": time.time()},
                   ["app", "key"])

    def kv_get(self, app: str, key: str) -> Any:
        check_name(key, "key", 512)
        with self.db.engine.connect() as conn:
            row = conn.execute(select(kv.c.value).where(kv.c.app == app, kv.c.key == key)).first()
        if row is None:
            raise NotFound(f"no key {key!r}")
        return row[0]

    def kv_delete(self, app: str, key: str) -> None:
        check_name(key, "key", 512)
        with self.db.engine.begin() as conn:
            current = self._lock_usage(conn, app)
            old = conn.execute(select(kv.c.size).where(kv.c.app == app, kv.c.key == key)).scalar()
            if old is None:
                raise NotFound(f"no key {key!r}")
            conn.execute(delete(kv).where(kv.c.app == app, kv.c.key == key))
            self._charge(conn, app, current, -old, None, 0)

    def kv_list(self, app: str, prefix: str = "", limit: int = MAX_LIST) -> list[str]:
        if prefix:
            check_name(prefix, "prefix", 512)
        q = select(kv.c.key).where(kv.c.app == app)
        if prefix:
            # LIKE with the wildcards escaped: a '%' in a key prefix is a literal '%'.
            esc = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            # SQLite's LIKE ignores ASCII case (PostgreSQL's does not): the substr test makes it exact on both.
            q = q.where(kv.c.key.like(esc + "%", escape="\\"), func.substr(kv.c.key, 1, len(prefix)) == prefix)
        with self.db.engine.connect() as conn:
            return [r[0] for r in conn.execute(q.order_by(kv.c.key).limit(_limit(limit)))]

    # -- documents -------------------------------------------------------------------------------------
    def doc_put(self, app: str, collection: str, doc_id: str, body: dict, *, limit: int | None = None,
                extra_used: int = 0) -> None:
        check_name(collection, "collection", 128)
        check_name(doc_id, "id", 256)
        if not isinstance(body, dict):
            raise InvalidRequest("a document must be a JSON object", param="body")
        size = check_json(body, "body") + len(doc_id.encode())
        key = and_(documents.c.app == app, documents.c.collection == collection, documents.c.doc_id == doc_id)
        with self.db.engine.begin() as conn:
            current = self._lock_usage(conn, app)
            old = conn.execute(select(documents.c.size).where(key)).scalar() or 0
            self._charge(conn, app, current, size - old, limit, extra_used)
            upsert(conn, documents, {"app": app, "collection": collection, "doc_id": doc_id, "body": body,
                                     "size": size, "updated_at": time.time()}, ["app", "collection", "doc_id"])

    def doc_get(self, app: str, collection: str, doc_id: str) -> dict:
        check_name(collection, "collection", 128)
        check_name(doc_id, "id", 256)
        with self.db.engine.connect() as conn:
            row = conn.execute(select(documents.c.body).where(
                documents.c.app == app, documents.c.collection == collection, documents.c.doc_id == doc_id)).first()
        if row is None:
            raise NotFound(f"no document {doc_id!r} in {collection!r}")
        return row[0]

    def doc_delete(self, app: str, collection: str, doc_id: str) -> None:
        check_name(collection, "collection", 128)
        check_name(doc_id, "id", 256)
        key = and_(documents.c.app == app, documents.c.collection == collection, documents.c.doc_id == doc_id)
        with self.db.engine.begin() as conn:
            current = self._lock_usage(conn, app)
            old = conn.execute(select(documents.c.size).where(key)).scalar()
            if old is None:
                raise NotFound(f"no document {doc_id!r} in {collection!r}")
            conn.execute(delete(documents).where(key))
            self._charge(conn, app, current, -old, None, 0)

    def doc_find(self, app: str, collection: str, where: dict | None = None, limit: int = 100) -> list[dict]:
        """Documents whose top-level fields equal every `where` item (filtered here, so both backends agree on
        JSON equality), newest first: [{"id", "body"}]."""
        check_name(collection, "collection", 128)
        where = where or {}
        if not isinstance(where, dict):
            raise InvalidRequest("where must be a JSON object", param="where")
        check_json(where, "where")
        limit = _limit(limit)
        q = (select(documents.c.doc_id, documents.c.body)
             .where(documents.c.app == app, documents.c.collection == collection)
             .order_by(documents.c.updated_at.desc(), documents.c.doc_id))
        out = []
        with self.db.engine.connect() as conn:
            for doc_id, body in conn.execute(q):
                if all(json_equal(body.get(k), v) for k, v in where.items()):
                    out.append({"id": doc_id, "body": body})
                    if len(out) >= limit:
                        break
        return out

    def doc_count(self, app: str, collection: str) -> int:
        with self.db.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(documents).where(
                documents.c.app == app, documents.c.collection == collection)).scalar() or 0)


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values. Python's `==` says True == 1 and [False] == [0]; JSON does not."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _limit(limit: Any) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIST:
        raise InvalidRequest(f"limit must be an integer in [1, {MAX_LIST}]", param="limit")
    return limit
