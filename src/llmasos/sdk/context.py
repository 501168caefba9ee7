"""The context an app's handler receives: `llm`, `embed`, `memory`, `storage`, `tools`, `log`. Every method is a
system call through the transport: checked against the app's manifest, scheduled, audited."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from llmasos.sdk.transport import Transport


class LLMClient:
    def __init__(self, t: Transport) -> None:
        self._t = t

    async def chat(self, messages: list[dict] | None = None, *, session: str | None = None, message: str | None = None,
                   max_tokens: int = 256, **kwargs: Any) -> dict:
        """One reply. Either `messages` (you manage the history) or `session` + `message` (the OS's memory
        manager builds the prompt from the session's history, summary and memories, and stores the turn).
        kwargs: sampling (temperature, top_p, seed, stop, n, ...), `response_format`, `tools` (names),
        `tool_choice`, `run_tools`, `max_steps`, `approve`, `priority`. Returns a dict with `text`, `pid`,
        `finish_reason`, `tool_calls`, `steps`, `usage`, `memory`."""
        return await self._t.call("llm.chat", _drop_none(messages=messages, session=session, message=message,
                                                         max_tokens=max_tokens, **kwargs))

    async def stream(self, messages: list[dict] | None = None, *, session: str | None = None,
                     message: str | None = None, max_tokens: int = 256, **kwargs: Any) -> AsyncIterator[dict]:
        """Like chat, yielding {"delta": text} items; the last one has finish_reason, usage and text."""
        async for item in self._t.stream("llm.chat", _drop_none(messages=messages, session=session, message=message,
                                                                 max_tokens=max_tokens, **kwargs)):
            yield item

    async def complete(self, prompt: str, *, max_tokens: int = 16, **kwargs: Any) -> dict:
        return await self._t.call("llm.complete", {"prompt": prompt, "max_tokens": max_tokens, **kwargs})

    async def structured(self, messages: list[dict], schema: dict, *, max_tokens: int = 256, **kwargs: Any) -> Any:
        """A reply constrained to the JSON Schema, parsed."""
        import json

        out = await self.chat(messages, max_tokens=max_tokens,
                              response_format={"type": "json_schema", "json_schema": {"schema": schema}}, **kwargs)
        if out["finish_reason"] == "length":
            raise ValueError(f"the reply hit max_tokens={max_tokens} before the JSON was complete; raise max_tokens")
        return json.loads(out["text"])


class MemoryClient:
    def __init__(self, t: Transport) -> None:
        self._t = t

    async def append(self, session: str, role: str, content: str) -> int:
        return await self._t.call("memory.append", {"session": session, "role": role, "content": content})

    async def history(self, session: str, limit: int = 100, offset: int = 0) -> list[dict]:
        return await self._t.call("memory.history", {"session": session, "limit": limit, "offset": offset})

    async def sessions(self) -> list[dict]:
        return await self._t.call("memory.sessions", {})

    async def search(self, query: str, k: int = 5, session: str | None = None) -> list[dict]:
        """Recall: earlier turns most similar to the query."""
        return await self._t.call("memory.search", _drop_none(query=query, k=k, session=session))

    async def search_text(self, query: str, k: int = 10, session: str | None = None) -> list[dict]:
        return await self._t.call("memory.search_text", _drop_none(query=query, k=k, session=session))

    async def archive(self, text: str | list[str], metadata: dict | list[dict] | None = None,
                      shared: bool = False) -> list[int]:
        return await self._t.call("memory.archive", _drop_none(text=text, metadata=metadata, shared=shared))

    async def archival_search(self, query: str, k: int = 5, filters: dict | None = None) -> list[dict]:
        return await self._t.call("memory.archival_search", _drop_none(query=query, k=k, filters=filters))

    async def archival_delete(self, item_id: int) -> None:
        await self._t.call("memory.archival_delete", {"id": item_id})

    async def core(self) -> dict[str, str]:
        return await self._t.call("memory.core_get", {})

    async def set_core(self, label: str, value: str, shared: bool = False) -> None:
        await self._t.call("memory.core_set", {"label": label, "value": value, "shared": shared})

    async def context(self, session: str, message: str, max_tokens: int = 256, **kwargs: Any) -> dict:
        return await self._t.call("memory.context", {"session": session, "message": message, "max_tokens": max_tokens,
                                                     **kwargs})

    async def summarize(self, session: str, force: bool = False) -> dict:
        return await self._t.call("memory.summarize", {"session": session, "force": force})


class StorageClient:
    def __init__(self, t: Transport) -> None:
        self._t = t

    async def get(self, key: str) -> Any:
        return await self._t.call("storage.kv_get", {"key": key})

    async def set(self, key: str, value: Any) -> None:
        await self._t.call("storage.kv_set", {"key": key, "value": value})

    async def delete(self, key: str) -> None:
        await self._t.call("storage.kv_delete", {"key": key})

    async def keys(self, prefix: str = "", limit: int = 1000) -> list[str]:
        return await self._t.call("storage.kv_list", {"prefix": prefix, "limit": limit})

    async def put_doc(self, collection: str, doc_id: str, body: dict) -> None:
        await self._t.call("storage.doc_put", {"collection": collection, "id": doc_id, "body": body})

    async def get_doc(self, collection: str, doc_id: str) -> dict:
        return await self._t.call("storage.doc_get", {"collection": collection, "id": doc_id})

    async def delete_doc(self, collection: str, doc_id: str) -> None:
        await self._t.call("storage.doc_delete", {"collection": collection, "id": doc_id})

    async def find(self, collection: str, where: dict | None = None, limit: int = 100) -> list[dict]:
        return await self._t.call("storage.doc_find", _drop_none(collection=collection, where=where, limit=limit))

    async def write_file(self, path: str, data: str) -> int:
        return await self._t.call("storage.file_write", {"path": path, "data": data})

    async def read_file(self, path: str) -> str:
        return await self._t.call("storage.file_read", {"path": path})

    async def list_files(self, prefix: str = "") -> list[dict]:
        return await self._t.call("storage.file_list", {"prefix": prefix})

    async def delete_file(self, path: str) -> None:
        await self._t.call("storage.file_delete", {"path": path})


class ToolsClient:
    def __init__(self, t: Transport) -> None:
        self._t = t

    async def list(self) -> list[dict]:
        return await self._t.call("tools.list", {})

    async def call(self, name: str, arguments: dict | None = None, session: str | None = None) -> dict:
        return await self._t.call("tools.call", _drop_none(name=name, arguments=arguments or {}, session=session))


class AppContext:
    """What a handler gets. Build one with `OS.context(app)` (in-process) or, with the server, over HTTP."""

    def __init__(self, app: str, transport: Transport, user: str = "") -> None:
        self.app = app
        self.user = user
        self.transport = transport
        self.llm = LLMClient(transport)
        self.memory = MemoryClient(transport)
        self.storage = StorageClient(transport)
        self.tools = ToolsClient(transport)
        self.log = logging.getLogger(f"llmasos.apps.{app}")

    async def embed(self, texts: str | list[str]) -> list[list[float]]:
        out = await self.transport.call("embed", {"texts": [texts] if isinstance(texts, str) else texts})
        return out["embeddings"]

    async def ps(self, state: str | None = None) -> list[dict]:
        return await self.transport.call("process.ps", _drop_none(state=state))

    async def kill(self, pid: int) -> dict:
        return await self.transport.call("process.kill", {"pid": pid})

    async def renice(self, pid: int, priority: int) -> dict:
        return await self.transport.call("process.renice", {"pid": pid, "priority": priority})

    async def audit(self, **filters: Any) -> list[dict]:
        return await self.transport.call("audit.query", filters)


def _drop_none(**kw: Any) -> dict:
    return {k: v for k, v in kw.items() if v is not None}
