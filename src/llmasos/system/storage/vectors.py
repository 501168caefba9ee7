"""Exact vector search over embeddings kept in the database.

Where PostgreSQL has pgvector, the database searches (`<=>` over the `embedding_vec` copy, exact, no index).
Otherwise the database is the source of truth and the search runs here: each scope (one app's
archival memory, one session's messages) is loaded once into a numpy matrix and kept in sync: every search
asks the database for the scope's row count, newest id and newest `created_at` (one indexed query), appends
rows written since, by this process or another replica, and reloads the scope only when rows were deleted (or
an id came back: SQLite hands the largest id out again after that row is deleted).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Connection, Table, and_, func, select, text

from llmasos.system.storage.db import Database, vector_literal


@dataclass
class _Scope:
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    vecs: np.ndarray | None = None
    last_id: int = 0
    newest: float | None = None  # max(created_at) when last synced


class VectorIndex:
    def __init__(self, db: Database, dim: int) -> None:
        self.db = db
        self.dim = dim
        self._scopes: dict[tuple, _Scope] = {}
        self._lock = threading.Lock()

    def _where(self, table: Table, scope: dict):
        return and_(*[table.c[k] == v for k, v in scope.items()], table.c.embedding.is_not(None))

    def _sync(self, table: Table, scope: dict) -> _Scope:
        key = (table.name, tuple(sorted(scope.items())))
        where = self._where(table, scope)
        with self.db.connect() as conn:
            count, max_id, newest = conn.execute(
                select(func.count(), func.max(table.c.id), func.max(table.c.created_at)).where(where)).one()
            count, max_id = int(count or 0), int(max_id or 0)
            s = self._scopes.get(key)
            if s is not None and len(s.ids) == count and s.last_id == max_id and s.newest == newest:
                return s
            if s is None or max_id < s.last_id or (max_id == s.last_id and s.newest != newest):
                s = _Scope()  # the newest rows were deleted, or their ids reused for new rows: start over
            rows = conn.execute(select(table.c.id, table.c.embedding).where(where, table.c.id > s.last_id)
                                .order_by(table.c.id)).all()
        if rows:
            new_ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            new_vecs = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), self.dim)
            s.ids = np.concatenate([s.ids, new_ids])
            s.vecs = new_vecs.copy() if s.vecs is None else np.concatenate([s.vecs, new_vecs])
            s.last_id = int(new_ids[-1])
        s.newest = newest
        if len(s.ids) != count:  # rows were deleted since we loaded: start over
            self._scopes.pop(key, None)
            return self._sync_fresh(table, scope, key, newest)
        self._scopes[key] = s
        return s

    def _sync_fresh(self, table: Table, scope: dict, key: tuple, newest: float | None) -> _Scope:
        with self.db.connect() as conn:
            rows = conn.execute(select(table.c.id, table.c.embedding).where(self._where(table, scope))
                                .order_by(table.c.id)).all()
        s = _Scope(newest=newest)
        if rows:
            s.ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            s.vecs = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), self.dim).copy()
            s.last_id = int(s.ids[-1])
        self._scopes[key] = s
        return s

    def mirror(self, conn: Connection, table: Table, ids: list[int], vecs: list[bytes]) -> None:
        """Keep pgvector's copy of new embeddings, in the writer's transaction (a no-op without pgvector)."""
        if self.db.pgvector and ids:
            conn.execute(text(f"UPDATE {table.name} SET embedding_vec = CAST(:v AS vector) WHERE id = :id"),
                         [{"id": i, "v": vector_literal(v)} for i, v in zip(ids, vecs, strict=True) if v is not None])

    def _pg_search(self, table: Table, scope: dict, query: np.ndarray, k: int | None,
                   exclude_from: int | None) -> list[tuple[int, float]]:
        where = " AND ".join(f'"{c}" = :s_{c}' for c in scope) + " AND embedding_vec IS NOT NULL"
        params: dict = {f"s_{c}": v for c, v in scope.items()}
        params["q"] = vector_literal(np.asarray(query, np.float32))
        if exclude_from is not None:
            where += " AND id < :excl"
            params["excl"] = exclude_from
        sql = (f"SELECT id, 1 - (embedding_vec <=> CAST(:q AS vector)) FROM {table.name} WHERE {where} "
               "ORDER BY embedding_vec <=> CAST(:q AS vector), id")
        if k is not None:
            sql += " LIMIT :k"
            params["k"] = k
        with self.db.connect() as conn:
            return [(int(i), float(score)) for i, score in conn.execute(text(sql), params)]

    def search(self, table: Table, scope: dict, query: np.ndarray, k: int,
               exclude_from: int | None = None) -> list[tuple[int, float]]:
        """The k most similar rows of the scope as (id, cosine), best first. `exclude_from`: skip ids >= it."""
        if self.db.pgvector:
            return self._pg_search(table, scope, query, k, exclude_from) if k > 0 else []
        with self._lock:
            s = self._sync(table, scope)
        if s.vecs is None or not len(s.ids) or k <= 0:
            return []
        ids, vecs = s.ids, s.vecs
        if exclude_from is not None:
            n = int(np.searchsorted(ids, exclude_from))
            ids, vecs = ids[:n], vecs[:n]
            if not n:
                return []
        scores = vecs @ np.asarray(query, np.float32)
        k = min(k, len(ids))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(ids[i]), float(scores[i])) for i in top]

    def ranked(self, table: Table, scope: dict, query: np.ndarray) -> list[tuple[int, float]]:
        """Every row of the scope ranked (for filtered searches that walk down the list)."""
        if self.db.pgvector:
            return self._pg_search(table, scope, query, None, None)
        with self._lock:
            s = self._sync(table, scope)
        if s.vecs is None or not len(s.ids):
            return []
        scores = s.vecs @ np.asarray(query, np.float32)
        order = np.argsort(-scores, kind="stable")
        return [(int(s.ids[i]), float(scores[i])) for i in order]

    def forget(self, table: Table, scope: dict) -> None:
        self._scopes.pop((table.name, tuple(sorted(scope.items()))), None)
