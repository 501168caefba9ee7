"""The SDK's remote transport: the same system calls over the server's `/v1/syscalls/{name}` routes, with the
app's API key. An app written against `AppContext` runs unchanged in its own process:

    ctx = remote_context("http://127.0.0.1:8000", key="llmos-...")
    await ctx.storage.set("k", 1)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from llmasos.sdk.context import AppContext
from llmasos.system.errors import SystemCallError, from_response


class HttpTransport:
    def __init__(self, url: str, key: str | None = None, *, timeout: float = 600.0,
                 client: httpx.AsyncClient | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = client or httpx.AsyncClient(base_url=self.url, headers=headers,
                                                   timeout=httpx.Timeout(timeout, connect=10.0))

    async def call(self, name: str, args: dict) -> Any:
        r = await self._client.post(f"/v1/syscalls/{name}", json={"args": args})
        if r.status_code != 200:
            raise from_response(r.status_code, _json(r))
        return r.json()["result"]

    async def stream(self, name: str, args: dict) -> AsyncIterator[Any]:
        async with self._client.stream("POST", f"/v1/syscalls/{name}/stream", json={"args": args}) as r:
            if r.status_code != 200:
                await r.aread()
                raise from_response(r.status_code, _json(r))
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    return
                item = json.loads(data)
                if isinstance(item, dict) and "error" in item and len(item) == 1:
                    raise from_response(500, item)
                yield item

    async def aclose(self) -> None:
        await self._client.aclose()


def _json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return {"error": {"message": r.text[:500] or f"HTTP {r.status_code}"}}


def remote_context(url: str, key: str | None = None, *, app: str = "", user: str = "") -> AppContext:
    """An app's context reaching a running LLMasOS server. `app` only names the context (the key decides
    which app the calls act for)."""
    return AppContext(app, HttpTransport(url, key), user)


__all__ = ["HttpTransport", "SystemCallError", "remote_context"]
