"""Who is calling: `Authorization: Bearer <key>` maps to a principal (an app, a user of an app, or the admin).

With no keys in the store the server runs in local mode: it is bound to localhost, and every request acts as
the operator (admin) on behalf of the configured client app. The first key created switches auth on, for a
running server too: the key store is the database, read at most once a second for that check.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from fastapi import Request

from llmasos.system.errors import AuthenticationError, NotFound
from llmasos.system.principals import ADMIN, KeyStore, Principal


@dataclass(frozen=True)
class Caller:
    principal: Principal
    app: str  # the app the call acts for: the key's own app, or (for the admin) the one it names

    @property
    def is_admin(self) -> bool:
        return self.principal.is_admin

    def scope(self) -> str | None:
        """The `app=` a syscall needs: the admin names the app it acts for; an app acts as itself."""
        return self.app if self.is_admin else None


class Authenticator:
    def __init__(self, keys: KeyStore, client_app: str, ensure_client: callable) -> None:  # type: ignore[valid-type]
        self.keys = keys
        self.client_app = client_app
        self._ensure_client = ensure_client
        self._any: tuple[float, bool] = (0.0, False)

    async def keys_exist(self) -> bool:
        checked, value = self._any
        if time.monotonic() - checked > 1.0:
            value = await asyncio.to_thread(self.keys.any_keys)
            self._any = (time.monotonic(), value)
        return value

    def forget(self) -> None:
        self._any = (0.0, False)

    async def __call__(self, request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not await self.keys_exist():
            # Local mode: any (or no) key is the operator, acting for the client app unless it names one.
            return Caller(ADMIN, self._named_app(request) or self.client_app)
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("missing API key: send Authorization: Bearer <key> (llmasos keys create)")
        principal = await asyncio.to_thread(self.keys.authenticate, token.strip())
        if principal.is_admin:
            return Caller(principal, self._named_app(request) or self.client_app)
        named = self._named_app(request)
        if named is not None and named != principal.app:
            raise NotFound(f"no app {named!r}")
        return Caller(principal, principal.app)

    def _named_app(self, request: Request) -> str | None:
        return request.headers.get("x-llmasos-app") or None

    def ensure_client(self, app: str) -> None:
        self._ensure_client(app)
