"""The audit log: one append-only row per system call (the database refuses updates and deletes)."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from sqlalchemy import insert, select

from llmasos.system.errors import InvalidRequest
from llmasos.system.guards.pii import redact
from llmasos.system.storage.db import Database
from llmasos.system.storage.tables import audit


def digest(args: Any) -> str:
    """A stable digest of the call's arguments: the log proves what was asked without storing it."""
    try:
        blob = json.dumps(args, sort_keys=True, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        blob = repr(args)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, *, principal: str, app: str | None, call: str, args: Any, decision: str, detail: str | None = None,
               pid: int | None = None, tokens: int = 0, latency_ms: float = 0.0, flags: dict | None = None,
               pii: str = "redact") -> None:
        """`pii`: the app's logs policy for `detail` (error messages can quote user data); `refuse` redacts,
        since a log line cannot be refused."""
        if detail is not None:
            detail = detail.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")[:2000]
            if pii != "allow":
                detail = redact(detail, "mask" if pii == "mask" else "redact")[0]
        with self.db.engine.begin() as conn:
            conn.execute(insert(audit).values(time=time.time(), principal=principal[:200], app=app, call=call,
                                              args_digest=digest(args), decision=decision, detail=detail, pid=pid,
                                              tokens=int(tokens), latency_ms=float(latency_ms), flags=flags or None))

    def query(self, app: str | None = None, *, since: float | None = None, until: float | None = None,
              call: str | None = None, decision: str | None = None, limit: int = 100) -> list[dict]:
        """Newest first. `app`: that app's entries only (what an app sees); None: all (the admin)."""
        if not isinstance(limit, int) or not 1 <= limit <= 10000:
            raise InvalidRequest("limit must be an integer in [1, 10000]", param="limit")
        q = select(audit)
        if app is not None:
            q = q.where(audit.c.app == app)
        if since is not None:
            q = q.where(audit.c.time >= float(since))
        if until is not None:
            q = q.where(audit.c.time <= float(until))
        if call is not None:
            q = q.where(audit.c.call == call)
        if decision is not None:
            q = q.where(audit.c.decision == decision)
        with self.db.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q.order_by(audit.c.id.desc()).limit(limit)).mappings()]
