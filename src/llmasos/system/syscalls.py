"""The system-call boundary. Every call an app makes (in-process or, later, over HTTP) comes through
`SystemCalls.call`: the caller's capabilities are checked against the syscall table, quotas apply, the work
runs, and one audit row records it, whatever the outcome. Another app's objects are simply not found.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from llmasos.system.errors import InvalidRequest, NotFound, PermissionDenied, SystemCallError
from llmasos.system.manifest import Manifest
from llmasos.system.principals import Principal
from llmasos.system.services import Services
from llmasos.system.tools.registry import ToolContext
from llmasos.system.validate import check_name


@dataclass
class CallContext:
    principal: Principal
    app: str
    user: str
    manifest: Manifest
    services: Services


@dataclass(frozen=True)
class Syscall:
    name: str
    permission: str | None  # None: any principal of the app (acting on its own objects only)
    audited: str  # what its audit row carries beyond the common fields (docs/system.md)
    offload: bool = True  # run in a worker thread (database, embedder), keeping the event loop free


# The syscall table: name -> permission. LLM calls live in llm_calls.py and are registered there.
TABLE: dict[str, Syscall] = {s.name: s for s in [
    Syscall("llm.chat", "llm", "pid, tokens; flags: injection, needs_approval, stripped_urls", offload=False),
    Syscall("llm.complete", "llm", "pid, tokens", offload=False),
    Syscall("memory.summarize", "memory.write", "pid (the last summary process)", offload=False),
    Syscall("embed", "embed", "tokens"),
    Syscall("memory.append", "memory.write", ""),
    Syscall("memory.history", "memory.read", ""),
    Syscall("memory.sessions", "memory.read", ""),
    Syscall("memory.search", "memory.read", ""),
    Syscall("memory.search_text", "memory.read", ""),
    Syscall("memory.archive", "memory.write", ""),
    Syscall("memory.archival_search", "memory.read", ""),
    Syscall("memory.archival_delete", "memory.write", ""),
    Syscall("memory.core_get", "memory.read", ""),
    Syscall("memory.core_set", "memory.write", ""),
    Syscall("memory.context", "memory.read", ""),
    Syscall("storage.kv_get", "storage", ""),
    Syscall("storage.kv_set", "storage", ""),
    Syscall("storage.kv_delete", "storage", ""),
    Syscall("storage.kv_list", "storage", ""),
    Syscall("storage.doc_put", "storage", ""),
    Syscall("storage.doc_get", "storage", ""),
    Syscall("storage.doc_delete", "storage", ""),
    Syscall("storage.doc_find", "storage", ""),
    Syscall("storage.file_write", "storage", ""),
    Syscall("storage.file_read", "storage", ""),
    Syscall("storage.file_list", "storage", ""),
    Syscall("storage.file_delete", "storage", ""),
    Syscall("tools.list", None, ""),
    Syscall("tools.call", "tools:<name>", "flags: tool, untrusted, injection", offload=False),
    Syscall("process.ps", None, ""),
    Syscall("process.kill", None, ""),
    Syscall("process.renice", None, ""),
    Syscall("audit.query", None, ""),
]}


class SystemCalls:
    def __init__(self, services: Services) -> None:
        self.s = services
        self.handlers: dict[str, Callable[..., Any]] = {}
        for name in TABLE:
            method = getattr(self, "_" + name.replace(".", "_"), None)
            if method is not None:
                self.handlers[name] = method
        self.listeners: list[Callable[[str, str, str], None]] = []  # (app, call, decision) of each call (metrics)

    def register(self, name: str, handler: Callable[..., Any]) -> None:
        """Bind a handler to a call of the table (the LLM calls live in llm_calls.py)."""
        if name.split(":")[0] not in TABLE:
            raise ValueError(f"{name!r} is not in the syscall table")
        self.handlers[name] = handler

    # -- the boundary ----------------------------------------------------------------------------------
    def context(self, principal: Principal, app: str | None = None) -> CallContext:
        """Resolve whose scope a call acts in: the principal's own app; only the admin may name another."""
        if principal.is_admin:
            if app is None:
                raise InvalidRequest("the admin must name the app a call acts for", param="app")
            target = app
        else:
            if app is not None and app != principal.app:
                raise NotFound(f"no app {app!r}")
            target = principal.app
        manifest = self.s.apps.get(target)
        return CallContext(principal, target, principal.user, manifest, self.s)

    def check(self, cc: CallContext, permission: str | None) -> None:
        if permission is None or cc.principal.is_admin or cc.manifest.allows(permission):
            return
        raise PermissionDenied(f"app {cc.app!r} lacks the {permission!r} permission (declare it in its manifest)")

    async def call(self, principal: Principal, name: str, args: dict | None = None, *, app: str | None = None) -> Any:
        args = dict(args or {})
        spec = TABLE.get(name)
        t0 = time.perf_counter()
        cc: CallContext | None = None
        try:
            if spec is None or name not in self.handlers:
                raise NotFound(f"no system call {name!r}")
            cc = self.context(principal, app)
            perm = spec.permission
            if perm == "tools:<name>":
                # Another app's tool does not exist for the caller: not found comes before permission.
                perm = self.s.tools.get(check_name(args.get("name"), "name", 64), cc.app).permission
            self.check(cc, perm)
            handler = self.handlers[name]
            if spec.offload:
                # The work and its audit row in one worker-thread hop: the event loop never waits on the database.
                return await asyncio.to_thread(self._run_and_audit, handler, principal, cc, name, args, t0)
            try:
                result = await handler(cc, **args)
            except TypeError as exc:
                raise _bad_arguments(name, exc) from exc
            result, extra = _split(result)
            await asyncio.to_thread(self._audit, principal, cc, name, args, "allowed", t0, extra)
            return result
        except SystemCallError as exc:
            if not getattr(exc, "_audited", False):
                await asyncio.to_thread(self._audit_error, principal, cc, name, args, t0, exc)
            raise
        except Exception as exc:
            await asyncio.to_thread(self._audit, principal, cc, name, args, "failed", t0,
                                    {"detail": f"{type(exc).__name__}: {exc}"})
            raise SystemCallError(f"{name} failed: {type(exc).__name__}: {exc}") from exc

    def _run_and_audit(self, handler: Callable[..., Any], principal: Principal, cc: CallContext, name: str,
                       args: dict, t0: float) -> Any:
        try:
            try:
                result = handler(cc, **args)
            except SystemCallError:
                raise
            except (TypeError, ValueError, OverflowError) as exc:
                # The arguments are JSON from the caller: a value the handler cannot use is the caller's error.
                raise InvalidRequest(f"{name}: invalid arguments: {exc}") from exc
        except SystemCallError as exc:
            self._audit_error(principal, cc, name, args, t0, exc)
            exc._audited = True  # type: ignore[attr-defined]
            raise
        except Exception as exc:
            self._audit(principal, cc, name, args, "failed", t0, {"detail": f"{type(exc).__name__}: {exc}"})
            err = SystemCallError(f"{name} failed: {type(exc).__name__}: {exc}")
            err._audited = True  # type: ignore[attr-defined]
            raise err from exc
        result, extra = _split(result)
        self._audit(principal, cc, name, args, "allowed", t0, extra)
        return result

    def _audit_error(self, principal: Principal, cc: CallContext | None, name: str, args: dict, t0: float,
                     exc: SystemCallError) -> None:
        decision = "denied" if exc.status in (401, 403, 404, 429) else "failed"
        self._audit(principal, cc, name, args, decision, t0, {"detail": exc.message})

    def _audit(self, principal: Principal, cc: CallContext | None, name: str, args: dict, decision: str, t0: float,
               extra: dict) -> None:
        self.s.audit.record(principal=str(principal), app=cc.app if cc else principal.app, call=name, args=args,
                            decision=decision, detail=extra.get("detail"), pid=extra.get("pid"),
                            tokens=extra.get("tokens", 0), latency_ms=(time.perf_counter() - t0) * 1000,
                            flags=extra.get("flags"), pii=cc.manifest.pii.logs if cc else "redact")
        for listener in self.listeners:
            listener(cc.app if cc else str(principal.app), name, decision)

    async def stream(self, principal: Principal, name: str, args: dict | None = None, *,
                     app: str | None = None) -> AsyncIterator[Any]:
        """A streaming call (llm.chat / llm.complete with stream): checked up front, audited when it ends."""
        args = dict(args or {})
        spec = TABLE.get(name)
        if spec is None or name + ":stream" not in self.handlers:
            raise NotFound(f"no streaming system call {name!r}")
        t0 = time.perf_counter()
        cc = None
        extra: dict = {}
        try:
            cc = self.context(principal, app)
            self.check(cc, spec.permission)
            try:
                items = self.handlers[name + ":stream"](cc, extra, **args)
            except TypeError as exc:
                raise _bad_arguments(name, exc) from exc
            async for item in items:
                yield item
            await asyncio.to_thread(self._audit, principal, cc, name, args, "allowed", t0, extra)
        except SystemCallError as exc:
            await asyncio.to_thread(self._audit_error, principal, cc, name, args, t0, exc)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            self._audit(principal, cc, name, args, "failed", t0, {**extra, "detail": "cancelled"})
            raise
        except Exception as exc:
            await asyncio.to_thread(self._audit, principal, cc, name, args, "failed", t0,
                                    {**extra, "detail": f"{type(exc).__name__}: {exc}"})
            raise SystemCallError(f"{name} failed: {type(exc).__name__}: {exc}") from exc

    # -- embed -----------------------------------------------------------------------------------------
    def _embed(self, cc: CallContext, texts: list[str]) -> tuple[dict, dict]:
        if isinstance(texts, str):
            texts = [texts]
        vecs = self.s.embedder.embed(texts)
        tokens = self.s.embedder.count_tokens(texts)
        return ({"model": self.s.embedder.id, "dim": int(vecs.shape[1]), "embeddings": vecs.tolist(),
                 "tokens": tokens}, {"_audit": True, "tokens": tokens})

    # -- memory ----------------------------------------------------------------------------------------
    def _memory_append(self, cc: CallContext, session: str, role: str, content: str) -> int:
        return self.s.recall.append(cc.app, session, role, content, user=cc.user)

    def _memory_history(self, cc: CallContext, session: str, limit: int = 100, offset: int = 0) -> list[dict]:
        return [m.__dict__ for m in self.s.recall.history(cc.app, session, limit, offset)]

    def _memory_sessions(self, cc: CallContext) -> list[dict]:
        return self.s.recall.sessions(cc.app, cc.user or None)

    def _memory_search(self, cc: CallContext, query: str, k: int = 5, session: str | None = None) -> list[dict]:
        return [h.__dict__ for h in self.s.recall.search(cc.app, query, k, session=session)]

    def _memory_search_text(self, cc: CallContext, query: str, k: int = 10, session: str | None = None) -> list[dict]:
        return [h.__dict__ for h in self.s.recall.search_text(cc.app, query, k, session=session)]

    def _memory_archive(self, cc: CallContext, text: str | list[str], metadata: dict | list[dict] | None = None,
                        shared: bool = False) -> list[int]:
        """Store items in long-term memory: the user's own (default for a user principal) or app-wide."""
        texts = [text] if isinstance(text, str) else text
        metas = metadata if isinstance(metadata, list) else [metadata or {} for _ in texts]
        if len(metas) != len(texts):
            raise InvalidRequest("metadata must be one object, or one per text", param="metadata")
        return self.s.archival.insert_many(cc.app, texts, metas, user="" if shared else cc.user)

    def _memory_archival_search(self, cc: CallContext, query: str, k: int = 5, filters: dict | None = None) -> list[dict]:
        return [h.__dict__ for h in self.s.archival.search(cc.app, query, k, user=cc.user or None, filters=filters)]

    def _memory_archival_delete(self, cc: CallContext, id: int) -> None:  # noqa: A002
        self.s.archival.delete(cc.app, _item_id(id))

    def _memory_core_get(self, cc: CallContext) -> dict[str, str]:
        return self.s.core.get_all(cc.app, cc.user)

    def _memory_core_set(self, cc: CallContext, label: str, value: str, shared: bool = False) -> None:
        self.s.core.set(cc.app, label, value, user="" if shared else cc.user)

    def _memory_context(self, cc: CallContext, session: str, message: str, max_tokens: int = 256,
                        window: int | None = None, system_prompt: str | None = None) -> dict:
        check_name(session, "session_id", 128)
        win = window or self.s.window
        r = self.s.context.build(cc.app, session, message, window=win, max_tokens=max_tokens, user=cc.user,
                                 system_prompt=cc.manifest.system_prompt if system_prompt is None else system_prompt)
        return {"messages": r.messages, "prompt_tokens": r.prompt_tokens, "report": r.report.as_dict()}

    # -- storage ---------------------------------------------------------------------------------------
    def _limits(self, cc: CallContext) -> tuple[int | None, int]:
        limit = cc.manifest.quotas.storage_bytes
        return limit, (self.s.files(cc.app).used_bytes() if limit is not None else 0)

    def _storage_kv_get(self, cc: CallContext, key: str) -> Any:
        return self.s.store.kv_get(cc.app, key)

    def _storage_kv_set(self, cc: CallContext, key: str, value: Any) -> None:
        limit, extra = self._limits(cc)
        self.s.store.kv_set(cc.app, key, value, limit=limit, extra_used=extra)

    def _storage_kv_delete(self, cc: CallContext, key: str) -> None:
        self.s.store.kv_delete(cc.app, key)

    def _storage_kv_list(self, cc: CallContext, prefix: str = "", limit: int = 1000) -> list[str]:
        return self.s.store.kv_list(cc.app, prefix, limit)

    def _storage_doc_put(self, cc: CallContext, collection: str, id: str, body: dict) -> None:  # noqa: A002
        limit, extra = self._limits(cc)
        self.s.store.doc_put(cc.app, collection, id, body, limit=limit, extra_used=extra)

    def _storage_doc_get(self, cc: CallContext, collection: str, id: str) -> dict:  # noqa: A002
        return self.s.store.doc_get(cc.app, collection, id)

    def _storage_doc_delete(self, cc: CallContext, collection: str, id: str) -> None:  # noqa: A002
        self.s.store.doc_delete(cc.app, collection, id)

    def _storage_doc_find(self, cc: CallContext, collection: str, where: dict | None = None, limit: int = 100) -> list[dict]:
        return self.s.store.doc_find(cc.app, collection, where, limit)

    def _storage_file_write(self, cc: CallContext, path: str, data: str, encoding: str = "utf-8") -> int:
        if encoding not in ("utf-8", "base64"):
            raise InvalidRequest("encoding must be utf-8 or base64", param="encoding")
        if not isinstance(data, str):
            raise InvalidRequest("data must be a string (text, or base64 with encoding='base64')", param="data")
        try:
            payload: bytes | str = base64.b64decode(data, validate=True) if encoding == "base64" else data
        except ValueError as exc:
            raise InvalidRequest(f"data is not valid base64: {exc}", param="data") from exc
        return self.s.write_file(cc.app, path, payload)

    def _storage_file_read(self, cc: CallContext, path: str, encoding: str = "utf-8") -> str:
        raw = self.s.files(cc.app).read(path)
        if encoding == "base64":
            return base64.b64encode(raw).decode()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"{path} is not UTF-8 text; read it with encoding='base64'") from exc

    def _storage_file_list(self, cc: CallContext, prefix: str = "") -> list[dict]:
        return self.s.files(cc.app).list(prefix)

    def _storage_file_delete(self, cc: CallContext, path: str) -> None:
        self.s.files(cc.app).delete(path)

    # -- tools -----------------------------------------------------------------------------------------
    def _tools_list(self, cc: CallContext) -> list[dict]:
        """The tools this app may call (others exist but are not listed)."""
        return [t.info() for t in self.s.tools.visible(cc.app)
                if cc.principal.is_admin or cc.manifest.allows(t.permission)]

    async def _tools_call(self, cc: CallContext, name: str, arguments: dict | None = None,
                          session: str | None = None) -> tuple[dict, dict]:
        from llmasos.system.guards.injection import scan

        tool = self.s.tools.get(name, cc.app)
        for perm in tool.requires:
            self.check(cc, perm)
        text = await tool.run(ToolContext(cc.app, cc.user, session, self.s), arguments or {})
        flags: dict = {"tool": name}
        if tool.untrusted_output:
            report = scan(text)
            flags["untrusted"] = True
            if report.flagged:
                flags["injection"] = sorted(report.kinds)
        return ({"tool": name, "content": text, "untrusted": tool.untrusted_output,
                 "injection": flags.get("injection", [])}, {"_audit": True, "flags": flags})

    # -- processes and audit ---------------------------------------------------------------------------
    def _process_ps(self, cc: CallContext, state: str | None = None) -> list[dict]:
        self.s.refresh_states()
        return [p.as_dict() for p in self.s.procs.ps(cc.app, state)]

    def _process_kill(self, cc: CallContext, pid: int) -> dict:
        return self.s.procs.kill(_pid(pid), cc.app).as_dict()

    def _process_renice(self, cc: CallContext, pid: int, priority: int) -> dict:
        if not cc.principal.is_admin and isinstance(priority, int) and priority < cc.manifest.priority:
            raise PermissionDenied(f"app {cc.app!r} may not raise a process above its manifest priority "
                                   f"{cc.manifest.priority}")
        return self.s.procs.renice(_pid(pid), priority, cc.app).as_dict()

    def _audit_query(self, cc: CallContext, since: float | None = None, until: float | None = None,
                     call: str | None = None, decision: str | None = None, limit: int = 100) -> list[dict]:
        return self.s.audit.query(cc.app, since=since, until=until, call=call, decision=decision, limit=limit)


def _split(result: Any) -> tuple[Any, dict]:
    """A handler may return (result, {"_audit": True, ...extra audit fields})."""
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict) and result[1].get("_audit"):
        return result
    return result, {}


def _bad_arguments(name: str, exc: TypeError) -> Exception:
    if "argument" not in str(exc):
        return exc
    return InvalidRequest(f"{name}: {exc}")


def _item_id(item_id: Any) -> int:
    if not isinstance(item_id, int) or isinstance(item_id, bool) or not 1 <= item_id < 2**63:
        raise InvalidRequest("id must be a positive integer below 2**63", param="id")
    return item_id


def _pid(pid: Any) -> int:
    if not isinstance(pid, int) or isinstance(pid, bool) or not 1 <= pid < 2**63:
        raise InvalidRequest("pid must be a positive integer", param="pid")
    return pid
