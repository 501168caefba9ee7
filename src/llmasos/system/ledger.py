"""The token ledger behind the tokens-per-minute quota. It lives in the database, so that replicas sharing
one PostgreSQL enforce one quota; callers reach it from worker threads (it never runs on the event loop)."""

from __future__ import annotations

import itertools
import time

from sqlalchemy import delete, func, insert, select

from llmasos.system.storage.db import Database
from llmasos.system.storage.tables import token_usage

WINDOW_S = 60.0


class TokenLedger:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._writes = itertools.count()

    def charge(self, app: str, tokens: int, at: float | None = None) -> None:
        now = time.time() if at is None else at
        with self.db.engine.begin() as conn:
            conn.execute(insert(token_usage).values(app=app, time=now, tokens=int(tokens)))
            if next(self._writes) % 256 == 0:  # keep the table small: older rows no longer count
                conn.execute(delete(token_usage).where(token_usage.c.time < now - 2 * WINDOW_S))

    def used_last_minute(self, app: str) -> int:
        since = time.time() - WINDOW_S
        with self.db.engine.connect() as conn:
            q = select(func.coalesce(func.sum(token_usage.c.tokens), 0)).where(
                token_usage.c.app == app, token_usage.c.time >= since)
            return int(conn.execute(q).scalar() or 0)
