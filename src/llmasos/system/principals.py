"""Principals and API keys. A key maps to an app, a user of an app, or the admin; keys are stored hashed."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import insert, select, update

from llmasos.system.errors import AuthenticationError, InvalidRequest, NotFound
from llmasos.system.storage.db import Database
from llmasos.system.storage.tables import api_keys
from llmasos.system.validate import check_name

Role = Literal["app", "user", "admin"]
KEY_PREFIX = "llmos-"


@dataclass(frozen=True)
class Principal:
    role: Role
    app: str | None = None  # None only for the admin
    user: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def __str__(self) -> str:
        if self.role == "admin":
            return "admin"
        return f"{self.app}/{self.user}" if self.user else str(self.app)

    @staticmethod
    def for_app(app: str, user: str = "") -> Principal:
        return Principal("user" if user else "app", app, user)


ADMIN = Principal("admin")


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, principal: Principal) -> tuple[str, str]:
        """A new key for the principal: returns (key_id, key). The key is shown once and never stored."""
        if principal.role != "admin":
            check_name(principal.app, "app", 64)
        if principal.user:
            check_name(principal.user, "user", 128)
        key_id = secrets.token_hex(6)
        key = f"{KEY_PREFIX}{key_id}-{secrets.token_urlsafe(24)}"
        with self.db.engine.begin() as conn:
            conn.execute(insert(api_keys).values(key_id=key_id, key_hash=_hash(key), role=principal.role,
                                                 app=principal.app, user=principal.user or None,
                                                 created_at=time.time()))
        return key_id, key

    def authenticate(self, key: str) -> Principal:
        """The principal of a live key; AuthenticationError otherwise (same message whatever was wrong)."""
        bad = AuthenticationError("invalid API key")
        if not isinstance(key, str) or not key.startswith(KEY_PREFIX) or len(key) > 200:
            raise bad
        if not (key.isascii() and key.isprintable()):  # a NUL or a lone surrogate would crash the lookup
            raise bad
        key_id = key[len(KEY_PREFIX):].split("-", 1)[0]
        with self.db.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)).mappings().first()
        if row is None or row["revoked_at"] is not None or not hmac.compare_digest(row["key_hash"], _hash(key)):
            raise bad
        return Principal(row["role"], row["app"], row["user"] or "")

    def list(self, app: str | None = None) -> list[dict]:
        q = select(api_keys.c.key_id, api_keys.c.role, api_keys.c.app, api_keys.c.user, api_keys.c.created_at,
                   api_keys.c.revoked_at).order_by(api_keys.c.created_at)
        if app is not None:
            q = q.where(api_keys.c.app == app)
        with self.db.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def revoke(self, key_id: str, app: str | None = None) -> None:
        q = update(api_keys).where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
        if app is not None:
            q = q.where(api_keys.c.app == app)
        with self.db.engine.begin() as conn:
            if not conn.execute(q.values(revoked_at=time.time())).rowcount:
                raise NotFound(f"no live key {key_id!r}")

    def any_keys(self) -> bool:
        with self.db.engine.connect() as conn:
            return conn.execute(select(api_keys.c.key_id).where(api_keys.c.revoked_at.is_(None)).limit(1)).first() is not None


def parse_role(role: str) -> Role:
    if role not in ("app", "user", "admin"):
        raise InvalidRequest(f"role must be app, user or admin, got {role!r}")
    return role  # type: ignore[return-value]
