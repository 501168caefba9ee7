"""The OS routes: apps (and their handlers), processes, audit, storage and memory scoped to the caller's app,
the system view, and `/v1/syscalls/{name}`, which the SDK's remote transport speaks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Body, Depends, Query

from llmasos.server.auth import Caller
from llmasos.server.schemas import (
    AppChatRequest,
    FileBody,
    FindBody,
    KVValue,
    MemoryItem,
    ReniceRequest,
    SyscallBody,
)
from llmasos.server.sse import event, sse_response
from llmasos.server.state import ServerState
from llmasos.system.errors import NotFound, PermissionDenied
from llmasos.system.principals import ADMIN


def os_router(st: ServerState) -> APIRouter:
    r = APIRouter()
    caller = st.auth
    os_ = st.os

    def visible_app(who: Caller, app: str) -> None:
        """Another app does not exist for an app's key; the admin sees them all."""
        if not who.is_admin and who.app != app:
            raise NotFound(f"no app {app!r}")
        os_.services.apps.get(app)

    def as_app(who: Caller, app: str) -> Caller:
        visible_app(who, app)
        return Caller(who.principal, app)

    # -- apps ----------------------------------------------------------------------------------------------
    @r.get("/v1/apps", tags=["Apps"])
    async def list_apps(who: Caller = Depends(caller)) -> dict:
        apps = await asyncio.to_thread(os_.apps)
        data = [{**m.model_dump(mode="json"), "handlers": os_.handlers(m.name)}
                for m in apps if who.is_admin or m.name == who.app]
        return {"object": "list", "data": data}

    @r.post("/v1/apps/{app}/chat", tags=["Apps"])
    async def app_chat(app: str, body: AppChatRequest, who: Caller = Depends(caller)) -> Any:
        visible_app(who, app)
        os_.app(app)  # installed with code, not only a client's manifest
        st.admit()
        user = who.principal.user
        procs: list = []
        if body.stream:
            pieces = os_.handle_stream(app, body.session_id, body.message, user=user, proc_out=procs)

            async def items() -> Any:
                async for piece in pieces:
                    yield {"delta": piece}

            def closing() -> Iterable[bytes]:
                yield event(_reply_record(os_, app, body.session_id, procs, None))

            return await sse_response(items(), lambda item: [event(item)], closing)
        reply = await os_.run_handler(app, "chat", {"session_id": body.session_id, "message": body.message},
                                      user=user, proc_out=procs)
        return _reply_record(os_, app, body.session_id, procs, reply)

    @r.post("/v1/apps/{app}/handlers/{handler}", tags=["Apps"])
    async def app_handler(app: str, handler: str, args: dict[str, Any] = Body(default_factory=dict),
                          who: Caller = Depends(caller)) -> dict:
        """An app's own route: any handler it declares with `@handler`, JSON arguments in, its result out."""
        visible_app(who, app)
        procs: list = []
        result = await os_.run_handler(app, handler, args, user=who.principal.user, proc_out=procs)
        return {"result": result, "pid": procs[0].pid if procs else None}

    @r.post("/v1/apps/{app}/handlers/{handler}/stream", tags=["Apps"])
    async def app_handler_stream(app: str, handler: str, args: dict[str, Any] = Body(default_factory=dict),
                                 who: Caller = Depends(caller)) -> Any:
        """The handler's pieces as server-sent events: `{"delta": text}` for text, `{"data": value}` for anything
        else (a plain handler sends its one result), then the process record, then `[DONE]`."""
        visible_app(who, app)
        st.admit()
        procs: list = []
        pieces = os_.stream_handler(app, handler, args, user=who.principal.user, proc_out=procs)

        def render(piece: Any) -> list[bytes]:
            return [event({"delta": piece} if isinstance(piece, str) else {"data": piece})]

        def closing() -> Iterable[bytes]:
            yield event(_reply_record(os_, app, args.get("session_id") or "", procs, None))

        return await sse_response(pieces, render, closing)

    @r.get("/v1/apps/{app}/sessions", tags=["Apps"])
    async def app_sessions(app: str, who: Caller = Depends(caller)) -> dict:
        return {"data": await st.call(as_app(who, app), "memory.sessions", {})}

    @r.get("/v1/apps/{app}/sessions/{session_id}", tags=["Apps"])
    async def app_history(app: str, session_id: str, limit: int = Query(100, ge=1, le=10000),
                          who: Caller = Depends(caller)) -> dict:
        return {"data": await st.call(as_app(who, app), "memory.history", {"session": session_id, "limit": limit})}

    # -- processes -----------------------------------------------------------------------------------------
    @r.get("/v1/processes", tags=["Processes"])
    async def processes(app: str | None = None, state: str | None = None, limit: int = Query(500, ge=1, le=100000),
                        who: Caller = Depends(caller)) -> dict:
        if who.is_admin:
            data = os_.ps(app, state)
        else:
            if app is not None and app != who.app:
                raise NotFound(f"no app {app!r}")
            data = await st.call(who, "process.ps", {"state": state} if state else {})
        return {"object": "list", "data": data[-limit:]}

    def owner(who: Caller, pid: int) -> Caller:
        """The admin acts in the process's app; an unknown pid fails inside the (audited) call."""
        if not who.is_admin:
            return who
        try:
            return Caller(ADMIN, os_.services.procs.get(pid).app)
        except NotFound:
            return who

    @r.get("/v1/processes/{pid}", tags=["Processes"])
    async def process(pid: int, who: Caller = Depends(caller)) -> dict:
        os_.services.refresh_states()
        return os_.services.procs.get(pid, None if who.is_admin else who.app).as_dict()

    @r.delete("/v1/processes/{pid}", tags=["Processes"])
    async def kill(pid: int, who: Caller = Depends(caller)) -> dict:
        return await st.call(owner(who, pid), "process.kill", {"pid": pid})

    @r.patch("/v1/processes/{pid}", tags=["Processes"])
    async def renice(pid: int, body: ReniceRequest, who: Caller = Depends(caller)) -> dict:
        return await st.call(owner(who, pid), "process.renice", {"pid": pid, "priority": body.priority})

    # -- audit ---------------------------------------------------------------------------------------------
    @r.get("/v1/audit", tags=["Audit"])
    async def audit(app: str | None = None, call: str | None = None, decision: str | None = None,
                    since: float | None = None, until: float | None = None,
                    limit: int = Query(100, ge=1, le=10000), who: Caller = Depends(caller)) -> dict:
        filters = {k: v for k, v in dict(call=call, decision=decision, since=since, until=until).items()
                   if v is not None}
        if who.is_admin:
            data = await asyncio.to_thread(os_.services.audit.query, app, limit=limit, **filters)
        else:
            if app is not None and app != who.app:
                raise NotFound(f"no app {app!r}")
            data = await st.call(who, "audit.query", {**filters, "limit": limit})
        return {"object": "list", "data": data}

    # -- storage (the caller's app only) -------------------------------------------------------------------
    @r.get("/v1/storage/kv", tags=["Storage"])
    async def kv_list(prefix: str = "", limit: int = Query(1000, ge=1, le=1000), who: Caller = Depends(caller)) -> dict:
        return {"data": await st.call(who, "storage.kv_list", {"prefix": prefix, "limit": limit})}

    @r.get("/v1/storage/kv/{key:path}", tags=["Storage"])
    async def kv_get(key: str, who: Caller = Depends(caller)) -> dict:
        return {"key": key, "value": await st.call(who, "storage.kv_get", {"key": key})}

    @r.put("/v1/storage/kv/{key:path}", tags=["Storage"])
    async def kv_set(key: str, body: KVValue, who: Caller = Depends(caller)) -> dict:
        await st.call(who, "storage.kv_set", {"key": key, "value": body.value})
        return {"key": key, "stored": True}

    @r.delete("/v1/storage/kv/{key:path}", tags=["Storage"])
    async def kv_delete(key: str, who: Caller = Depends(caller)) -> dict:
        await st.call(who, "storage.kv_delete", {"key": key})
        return {"key": key, "deleted": True}

    @r.post("/v1/storage/docs/{collection}/find", tags=["Storage"])
    async def doc_find(collection: str, body: FindBody, who: Caller = Depends(caller)) -> dict:
        return {"data": await st.call(who, "storage.doc_find", {"collection": collection, "where": body.where,
                                                                 "limit": body.limit})}

    @r.get("/v1/storage/docs/{collection}/{doc_id}", tags=["Storage"])
    async def doc_get(collection: str, doc_id: str, who: Caller = Depends(caller)) -> dict:
        return await st.call(who, "storage.doc_get", {"collection": collection, "id": doc_id})

    @r.put("/v1/storage/docs/{collection}/{doc_id}", tags=["Storage"])
    async def doc_put(collection: str, doc_id: str, body: dict[str, Any] = Body(...),
                      who: Caller = Depends(caller)) -> dict:
        await st.call(who, "storage.doc_put", {"collection": collection, "id": doc_id, "body": body})
        return {"collection": collection, "id": doc_id, "stored": True}

    @r.delete("/v1/storage/docs/{collection}/{doc_id}", tags=["Storage"])
    async def doc_delete(collection: str, doc_id: str, who: Caller = Depends(caller)) -> dict:
        await st.call(who, "storage.doc_delete", {"collection": collection, "id": doc_id})
        return {"collection": collection, "id": doc_id, "deleted": True}

    @r.get("/v1/storage/files", tags=["Storage"])
    async def file_list(prefix: str = "", who: Caller = Depends(caller)) -> dict:
        return {"data": await st.call(who, "storage.file_list", {"prefix": prefix})}

    @r.get("/v1/storage/files/{path:path}", tags=["Storage"])
    async def file_read(path: str, encoding: str = "utf-8", who: Caller = Depends(caller)) -> dict:
        return {"path": path, "encoding": encoding,
                "data": await st.call(who, "storage.file_read", {"path": path, "encoding": encoding})}

    @r.put("/v1/storage/files/{path:path}", tags=["Storage"])
    async def file_write(path: str, body: FileBody, who: Caller = Depends(caller)) -> dict:
        n = await st.call(who, "storage.file_write", {"path": path, "data": body.data, "encoding": body.encoding})
        return {"path": path, "bytes": n}

    @r.delete("/v1/storage/files/{path:path}", tags=["Storage"])
    async def file_delete(path: str, who: Caller = Depends(caller)) -> dict:
        await st.call(who, "storage.file_delete", {"path": path})
        return {"path": path, "deleted": True}

    # -- archival memory (the caller's app only) -----------------------------------------------------------
    @r.post("/v1/memory", tags=["Memory"])
    async def memory_add(body: MemoryItem, who: Caller = Depends(caller)) -> dict:
        ids = await st.call(who, "memory.archive", body.model_dump(exclude_none=True))
        return {"object": "list", "ids": ids}

    @r.get("/v1/memory/search", tags=["Memory"])
    async def memory_search(q: str = Query(..., min_length=1, max_length=8000), k: int = Query(5, ge=1, le=100),
                            who: Caller = Depends(caller)) -> dict:
        return {"object": "list", "data": await st.call(who, "memory.archival_search", {"query": q, "k": k})}

    @r.delete("/v1/memory/{item_id}", tags=["Memory"])
    async def memory_delete(item_id: int, who: Caller = Depends(caller)) -> dict:
        await st.call(who, "memory.archival_delete", {"id": item_id})
        return {"id": item_id, "deleted": True}

    # -- raw system calls (the SDK's remote transport) -----------------------------------------------------
    @r.post("/v1/syscalls/{name}", tags=["System calls"])
    async def syscall(name: str, body: SyscallBody, who: Caller = Depends(caller)) -> dict:
        if name.startswith("llm."):
            st.admit()
        return {"result": await st.call(who, name, body.args)}

    @r.post("/v1/syscalls/{name}/stream", tags=["System calls"])
    async def syscall_stream(name: str, body: SyscallBody, who: Caller = Depends(caller)) -> Any:
        st.admit()
        return await sse_response(st.stream(who, name, body.args), lambda item: [event(item)])

    # -- the system view -----------------------------------------------------------------------------------
    @r.get("/v1/system", tags=["System"])
    async def system(who: Caller = Depends(caller)) -> dict:
        if not who.is_admin:
            raise PermissionDenied("the system view needs an admin key")
        info = await asyncio.to_thread(os_.info)
        return {**info, "chat_model": st.chat_model, "embed_model": st.embed_model, "uptime_s": time.time() - st.started,
                "kernel": st.metrics.kernel_snapshot() if st.metrics else None,
                "apps_share": st.metrics.app_tokens() if st.metrics else None}

    return r


def _reply_record(os_: Any, app: str, session_id: str, procs: list, reply: Any) -> dict:
    """The reply with its process record: the handler and the LLM processes it ran (tokens, timing, memory)."""
    handler = procs[0] if procs else None
    children = [p.as_dict() for p in os_.services.procs.ps(app) if handler is not None and p.parent == handler.pid]
    out: dict = {"app": app, "session_id": session_id, "pid": handler.pid if handler else None,
                 "processes": children}
    if reply is not None:
        out["reply"] = reply
    else:
        out["done"] = True
    return out
