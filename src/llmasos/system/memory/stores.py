"""The stored memory tiers: recall (all turns, by text and embedding), archival (long-term, by embedding with
metadata filters), core blocks (pinned), and each session's rolling summary. All scoped by app."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, or_, select

from llmasos.system.errors import InvalidRequest, NotFound
from llmasos.system.storage.db import Database
from llmasos.system.storage.store import json_equal, upsert
from llmasos.system.storage.tables import archival, core_blocks, messages, summaries
from llmasos.system.storage.vectors import VectorIndex
from llmasos.system.validate import check_json, check_name, check_text

ROLES = ("system", "user", "assistant", "tool")
Embed = Callable[[list[str]], np.ndarray]
MAX_K = 100


@dataclass
class Message:
    id: int
    role: str
    content: str
    tokens: int
    created_at: float
    session: str = ""


@dataclass
class Hit:
    id: int
    text: str
    score: float
    meta: dict
    source: str  # recall | archival
    role: str | None = None


def _check_k(k: Any) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise InvalidRequest(f"k must be an integer in [1, {MAX_K}]", param="k")
    return k


class RecallMemory:
    def __init__(self, db: Database, vectors: VectorIndex, embed: Embed, count_tokens: Callable[[str], int]) -> None:
        self.db, self.vectors, self.embed, self.count_tokens = db, vectors, embed, count_tokens

    def append(self, app: str, session: str, role: str, content: str, user: str = "", *,
               embedding: np.ndarray | None = None, tokens: int | None = None) -> int:
        check_name(session, "session_id", 128)
        if role not in ROLES:
            raise InvalidRequest(f"role must be one of {ROLES}", param="role")
        check_text(content, "content")
        if embedding is None and role in ("user", "assistant") and content.strip():
            embedding = self.embed([content])[0]
        tokens = self.count_tokens(content) if tokens is None else tokens
        row = {"app": app, "user": user, "session": session, "role": role, "content": content, "tokens": tokens,
               "embedding": None if embedding is None else np.asarray(embedding, np.float32).tobytes(),
               "created_at": time.time()}
        with self.db.engine.begin() as conn:
            mid = int(conn.execute(insert(messages).values(**row).returning(messages.c.id)).scalar_one())
            self.vectors.mirror(conn, messages, [mid], [row["embedding"]])
            return mid

    def append_many(self, app: str, session: str, turns: list[tuple[str, str]], user: str = "") -> list[int]:
        """Bulk import (one embedding batch, one transaction): [(role, content)]."""
        for role, content in turns:
            if role not in ROLES:
                raise InvalidRequest(f"role must be one of {ROLES}", param="role")
            check_text(content, "content")
        check_name(session, "session_id", 128)
        texts = [c for _, c in turns]
        vecs = self.embed(texts) if texts else np.zeros((0, 1), np.float32)
        now = time.time()
        rows = [{"app": app, "user": user, "session": session, "role": r, "content": c,
                 "tokens": self.count_tokens(c), "embedding": vecs[i].astype(np.float32).tobytes(), "created_at": now}
                for i, (r, c) in enumerate(turns)]
        with self.db.engine.begin() as conn:
            ids = [int(conn.execute(insert(messages).values(**row).returning(messages.c.id)).scalar_one())
                   for row in rows]
            self.vectors.mirror(conn, messages, ids, [row["embedding"] for row in rows])
        return ids

    def recent(self, app: str, session: str, *, before_id: int | None = None, limit: int = 64) -> list[Message]:
        """The newest messages of a session, newest first."""
        q = select(messages.c.id, messages.c.role, messages.c.content, messages.c.tokens, messages.c.created_at).where(
            messages.c.app == app, messages.c.session == session)
        if before_id is not None:
            q = q.where(messages.c.id < before_id)
        with self.db.connect() as conn:
            rows = conn.execute(q.order_by(messages.c.id.desc()).limit(limit)).all()
        return [Message(*r, session=session) for r in rows]

    def history(self, app: str, session: str, limit: int = 100, offset: int = 0) -> list[Message]:
        """A session's messages, oldest first."""
        check_name(session, "session_id", 128)
        q = (select(messages.c.id, messages.c.role, messages.c.content, messages.c.tokens, messages.c.created_at)
             .where(messages.c.app == app, messages.c.session == session).order_by(messages.c.id)
             .offset(max(int(offset), 0)).limit(max(1, min(int(limit), 10000))))
        with self.db.connect() as conn:
            return [Message(*r, session=session) for r in conn.execute(q)]

    def sessions(self, app: str, user: str | None = None) -> list[dict]:
        q = select(messages.c.session, func.count(), func.max(messages.c.created_at)).where(messages.c.app == app)
        if user is not None:
            q = q.where(messages.c.user == user)
        with self.db.connect() as conn:
            rows = conn.execute(q.group_by(messages.c.session).order_by(func.max(messages.c.created_at).desc())).all()
        return [{"session_id": s, "messages": int(n), "last_at": float(t)} for s, n, t in rows]

    def count_below(self, app: str, session: str, bounds: list[int]) -> list[int]:
        """For each bound, how many of the session's messages have a smaller id (one query for all)."""
        cols = [select(func.count()).select_from(messages).where(
            messages.c.app == app, messages.c.session == session, messages.c.id < b).scalar_subquery() for b in bounds]
        with self.db.connect() as conn:
            return [int(n or 0) for n in conn.execute(select(*cols)).one()]

    def count(self, app: str, session: str, *, below_id: int | None = None, above_id: int | None = None) -> int:
        q = select(func.count()).select_from(messages).where(messages.c.app == app, messages.c.session == session)
        if below_id is not None:
            q = q.where(messages.c.id < below_id)
        if above_id is not None:
            q = q.where(messages.c.id > above_id)
        with self.db.connect() as conn:
            return int(conn.execute(q).scalar() or 0)

    def stored_embedding(self, app: str, session: str, msg_id: int, content: str) -> np.ndarray | None:
        """The embedding stored with message `msg_id`, if it holds exactly `content` (None otherwise)."""
        with self.db.connect() as conn:
            row = conn.execute(select(messages.c.content, messages.c.embedding).where(
                messages.c.app == app, messages.c.session == session, messages.c.id == msg_id)).first()
        if row is None or row[1] is None or row[0] != content or len(row[1]) != 4 * self.vectors.dim:
            return None
        return np.frombuffer(row[1], np.float32)

    def search(self, app: str, query: str, k: int = 5, *, session: str | None = None,
               exclude_from: int | None = None, query_vec: np.ndarray | None = None) -> list[Hit]:
        """By embedding: the turns most similar to the query (within one session, or across the app's)."""
        check_text(query, "query", allow_empty=False)
        _check_k(k)
        q = self.embed([query])[0] if query_vec is None else query_vec
        scope = {"app": app} if session is None else {"app": app, "session": session}
        found = self.vectors.search(messages, scope, q, k, exclude_from=exclude_from)
        return self._hits(app, found)

    def search_text(self, app: str, query: str, k: int = 10, *, session: str | None = None) -> list[Hit]:
        """By text: turns containing every word of the query (case-insensitive), newest first."""
        check_text(query, "query", allow_empty=False, max_len=1000)
        _check_k(k)
        words = [w for w in query.lower().split() if w][:16]
        q = select(messages.c.id).where(messages.c.app == app)
        if session is not None:
            q = q.where(messages.c.session == session)
        for w in words:
            esc = w.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            q = q.where(func.lower(messages.c.content).like(f"%{esc}%", escape="\\"))
        with self.db.connect() as conn:
            ids = [r[0] for r in conn.execute(q.order_by(messages.c.id.desc()).limit(k))]
        return self._hits(app, [(i, 1.0) for i in ids])

    def _hits(self, app: str, found: list[tuple[int, float]]) -> list[Hit]:
        if not found:
            return []
        with self.db.connect() as conn:
            rows = {r[0]: r for r in conn.execute(
                select(messages.c.id, messages.c.role, messages.c.content, messages.c.session)
                .where(messages.c.app == app, messages.c.id.in_([i for i, _ in found])))}
        return [Hit(i, rows[i][2], s, {"session_id": rows[i][3]}, "recall", rows[i][1]) for i, s in found if i in rows]


class ArchivalMemory:
    def __init__(self, db: Database, vectors: VectorIndex, embed: Embed) -> None:
        self.db, self.vectors, self.embed = db, vectors, embed

    def insert(self, app: str, text: str, meta: dict | None = None, user: str = "") -> int:
        return self.insert_many(app, [text], [meta or {}], user)[0]

    def insert_many(self, app: str, texts: list[str], metas: list[dict] | None = None, user: str = "") -> list[int]:
        if not isinstance(texts, list) or not texts:
            raise InvalidRequest("texts must be a non-empty list", param="text")
        metas = metas or [{} for _ in texts]
        if not isinstance(metas, list) or len(metas) != len(texts):
            raise InvalidRequest("metadata must be a list with one object per text", param="metadata")
        for t, m in zip(texts, metas, strict=True):
            check_text(t, "text", allow_empty=False)
            if not isinstance(m, dict):
                raise InvalidRequest("metadata must be a JSON object", param="metadata")
            check_json(m, "metadata", max_bytes=64 << 10)
        vecs = self.embed(texts)
        now = time.time()
        blobs = [v.astype(np.float32).tobytes() for v in vecs]
        with self.db.engine.begin() as conn:
            ids = [int(conn.execute(insert(archival).values(
                app=app, user=user, text=t, meta=m, embedding=b, created_at=now,
            ).returning(archival.c.id)).scalar_one()) for t, m, b in zip(texts, metas, blobs, strict=True)]
            self.vectors.mirror(conn, archival, ids, blobs)
        return ids

    def search(self, app: str, query: str, k: int = 5, *, user: str | None = None, filters: dict | None = None,
               query_vec: np.ndarray | None = None) -> list[Hit]:
        """By embedding, best first. `user`: that user's items plus the app-wide ones. `filters`: metadata
        equality per key (a list value matches any of its items)."""
        check_text(query, "query", allow_empty=False)
        _check_k(k)
        filters = filters or {}
        check_json(filters, "filters", max_bytes=16 << 10)
        if not isinstance(filters, dict):
            raise InvalidRequest("filters must be a JSON object", param="filters")
        q = self.embed([query])[0] if query_vec is None else query_vec
        ranked = self.vectors.ranked(archival, {"app": app}, q)
        out: list[Hit] = []
        # Walk down the ranking in pages, fetching rows to apply the user scope and the metadata filters. The
        # first page is small (unfiltered, it is the answer); later ones grow, for selective filters.
        start, size = 0, max(4 * k, 16)
        while start < len(ranked):
            page = ranked[start:start + size]
            start, size = start + size, min(size * 4, 1024)
            with self.db.connect() as conn:
                stmt = select(archival.c.id, archival.c.text, archival.c.meta, archival.c.user).where(
                    archival.c.app == app, archival.c.id.in_([i for i, _ in page]))
                if user is not None:
                    stmt = stmt.where(or_(archival.c.user == user, archival.c.user == ""))
                rows = {r[0]: r for r in conn.execute(stmt)}
            for i, score in page:
                r = rows.get(i)
                if r is not None and _matches(r[2], filters):
                    out.append(Hit(i, r[1], score, r[2], "archival"))
                    if len(out) == k:
                        return out
        return out

    def delete(self, app: str, item_id: int) -> None:
        with self.db.engine.begin() as conn:
            n = conn.execute(delete(archival).where(archival.c.app == app, archival.c.id == item_id)).rowcount
        if not n:
            raise NotFound(f"no archival item {item_id}")

    def count(self, app: str) -> int:
        with self.db.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(archival).where(archival.c.app == app)).scalar())


def _matches(meta: dict, filters: dict) -> bool:
    for k, want in filters.items():
        have = meta.get(k)
        if isinstance(want, list):
            if not any(json_equal(have, w) for w in want):
                return False
        elif not json_equal(have, want):
            return False
    return True


class CoreMemory:
    """Small pinned blocks (persona, facts about the user) that go into every prompt of the app."""

    MAX_BLOCK = 4000

    def __init__(self, db: Database) -> None:
        self.db = db

    def set(self, app: str, label: str, value: str, user: str = "") -> None:
        check_name(label, "label", 64)
        check_text(value, "value", max_len=self.MAX_BLOCK)
        with self.db.engine.begin() as conn:
            upsert(conn, core_blocks, {"app": app, "user": user, "label": label, "value": value,
                                       "updated_at": time.time()}, ["app", "user", "label"])

    def get_all(self, app: str, user: str = "") -> dict[str, str]:
        """The app-wide blocks, overridden by the user's own blocks of the same label."""
        with self.db.connect() as conn:
            rows = conn.execute(select(core_blocks.c.user, core_blocks.c.label, core_blocks.c.value).where(
                core_blocks.c.app == app, or_(core_blocks.c.user == "", core_blocks.c.user == user))
                .order_by(core_blocks.c.label)).all()
        out: dict[str, str] = {}
        for _user, label, value in sorted(rows, key=lambda r: r[0] != ""):
            out[label] = value
        return out

    def delete(self, app: str, label: str, user: str = "") -> None:
        with self.db.engine.begin() as conn:
            n = conn.execute(delete(core_blocks).where(core_blocks.c.app == app, core_blocks.c.user == user,
                                                       core_blocks.c.label == label)).rowcount
        if not n:
            raise NotFound(f"no core block {label!r}")


@dataclass
class Summary:
    text: str
    tokens: int
    covered_upto: int


class SummaryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, app: str, session: str) -> Summary | None:
        with self.db.connect() as conn:
            row = conn.execute(select(summaries.c.text, summaries.c.tokens, summaries.c.covered_upto).where(
                summaries.c.app == app, summaries.c.session == session)).first()
        return None if row is None else Summary(*row)

    def set(self, app: str, session: str, summary: Summary) -> None:
        check_text(summary.text, "summary")
        with self.db.engine.begin() as conn:
            upsert(conn, summaries, {"app": app, "session": session, "text": summary.text, "tokens": summary.tokens,
                                     "covered_upto": summary.covered_upto, "updated_at": time.time()},
                   ["app", "session"])
