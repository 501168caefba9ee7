"""`OS`: boots the kernel, the embedder and every system service from one config, installs the apps, and
runs their handlers as processes. Several can live side by side in one Python process (no globals).

    from llmasos import OS
    with OS(data_dir="/tmp/os1") as os1:
        print(os1.chat("assistant", "s1", "What does harbor mean?"))
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

from llmasos.sdk.app import App
from llmasos.sdk.context import AppContext
from llmasos.sdk.transport import LocalTransport
from llmasos.system.apps import AppTable, issue_key
from llmasos.system.audit import AuditLog
from llmasos.system.config import OSConfig, load_config
from llmasos.system.errors import InvalidRequest, NotFound, ProcessFailed, SystemCallError
from llmasos.system.ledger import TokenLedger
from llmasos.system.llm_calls import LLMCalls, current_pid
from llmasos.system.manifest import Manifest
from llmasos.system.memory.codec import CharCodec, ChatCodec
from llmasos.system.memory.context import ContextBuilder, ContextShares
from llmasos.system.memory.stores import ArchivalMemory, CoreMemory, RecallMemory, SummaryStore
from llmasos.system.principals import ADMIN, KeyStore, Principal
from llmasos.system.processes import ProcessTable, ProcState
from llmasos.system.services import Services
from llmasos.system.storage.db import Database, sqlite_url
from llmasos.system.storage.store import Store
from llmasos.system.storage.vectors import VectorIndex
from llmasos.system.syscalls import SystemCalls
from llmasos.system.tools.builtin import builtin_tools
from llmasos.system.tools.registry import ToolRegistry

log = logging.getLogger(__name__)


class OS:
    def __init__(self, config: OSConfig | str | Path | None = None, *, embedder: Any = None, llm: Any = None,
                 **overrides: Any) -> None:
        """`config`: an OSConfig, or a TOML/YAML file; keyword overrides go on top (`data_dir=...`,
        `model={"name": "builtin"}`). `embedder` / `llm` (an `AsyncLLM`) may be passed in to share them."""
        if isinstance(config, OSConfig):
            self.config = config.model_copy(update=overrides) if overrides else config
        else:
            self.config = load_config(config, **overrides)
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self._owns_llm = llm is None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="llmasos-os", daemon=True)
        self._thread.start()
        self._apps: dict[str, App] = {}
        self._closed = False
        try:
            self.db = Database(cfg.database_url or sqlite_url(cfg.data_dir), cfg.database_schema,
                               cfg.sqlite_synchronous)
            if embedder is None:
                from llmasos.system.embedder import Embedder

                embedder = Embedder(cfg.embedder.name, cfg.embedder.device)
            self.embedder = embedder
            if llm is None and cfg.load_model:
                llm = self._boot_kernel()
            self.llm = llm
            self.services = self._services()
            self.syscalls = SystemCalls(self.services)
            m = cfg.memory
            self.llm_calls = LLMCalls(self.syscalls, m.summary_share, m.recent_turns_share, m.summarize_after_tokens)
            for tool in builtin_tools():
                self.services.tools.register(tool)
            self._install_configured()
        except BaseException:
            self.shutdown()
            raise

    # -- boot ------------------------------------------------------------------------------------------
    def _boot_kernel(self) -> Any:
        from llmasos.kernel.async_llm import AsyncLLM
        from llmasos.kernel.config import EngineConfig
        from llmasos.kernel.llm import build_engine

        mc = self.config.model
        if mc.upstreams:
            from llmasos.kernel.upstream_llm import build_upstream_llm

            return build_upstream_llm(mc.upstreams, mc.tokenizer or mc.name, model=mc.upstream_model,
                                      api_key=mc.upstream_api_key, max_model_len=mc.max_model_len,
                                      max_inflight=mc.upstream_max_inflight)
        engine = build_engine(EngineConfig(model=mc.name, dtype=mc.dtype, device=mc.device, num_threads=mc.threads,
                                           max_model_len=mc.max_model_len, kv_cache_memory=mc.kv_cache_memory,
                                           max_num_seqs=mc.max_num_seqs,
                                           max_num_batched_tokens=mc.max_num_batched_tokens))
        return AsyncLLM(engine)

    def _services(self) -> Services:
        codec = ChatCodec(self.llm.engine.tokenizer) if self.llm is not None else CharCodec()
        vectors = VectorIndex(self.db, self.embedder.dim)
        recall = RecallMemory(self.db, vectors, self.embedder.embed, codec.count)
        archival = ArchivalMemory(self.db, vectors, self.embedder.embed)
        core, summaries = CoreMemory(self.db), SummaryStore(self.db)
        m = self.config.memory
        shares = ContextShares(summary=m.summary_share, recall=m.recall_share)
        return Services(
            db=self.db, data_dir=self.config.data_dir, store=Store(self.db), apps=AppTable(self.db, self.config.default_quotas),
            keys=KeyStore(self.db), audit=AuditLog(self.db),
            procs=ProcessTable(self.config.process_history), tools=ToolRegistry(), recall=recall, archival=archival,
            core=core, summaries=summaries,
            context=ContextBuilder(codec, recall, archival, core, summaries, shares, m.recall_k), codec=codec,
            embedder=self.embedder, llm=self.llm,
            window=self.llm.engine.max_model_len if self.llm is not None else 2048, ledger=TokenLedger(self.db),
        )

    def _install_configured(self) -> None:
        from llmasos.sdk.discovery import bundled, from_entry_points, from_folder

        # An installed package's app runs only when the config names it; a folder's apps are all installed.
        published = {a.manifest.name: a for a in from_entry_points()}
        folder = from_folder(self.config.apps_dir) if self.config.apps_dir is not None else []
        local = {a.manifest.name: a for a in folder}
        for name in self.config.apps:
            a = local.get(name) or published.get(name) or bundled(name)
            if a is None:
                raise ValueError(f"config field 'apps': no app named {name!r} (bundled, in apps_dir, or an "
                                 f"entry point of the llmasos.apps group)")
            self.install(a)
        for name, a in local.items():
            if name not in self._apps:
                self.install(a)

    # -- apps ------------------------------------------------------------------------------------------
    def install(self, app: App) -> Manifest:
        """Install (or upgrade) an app: its manifest is stored, its tools registered for it alone."""
        manifest = app.manifest
        if not isinstance(manifest, Manifest):
            raise InvalidRequest("an app needs a Manifest")
        manifest = self.services.apps.install(manifest)  # the config's default quotas fill the unlimited ones
        self.services.tools.unregister_app(manifest.name)
        for tool in app.tools():
            self.services.tools.register(tool, manifest.name)
        if self.llm is not None:
            self.llm.submit(lambda e: e.set_latency_sensitive(manifest.name, manifest.priority,
                                                              manifest.latency_sensitive)).result(timeout=60)
        if manifest.mcp_servers:
            self.run(self._connect_mcp(manifest))
        self._apps[manifest.name] = app
        return manifest

    async def _connect_mcp(self, manifest: Manifest) -> None:
        from llmasos.system.tools.mcp_client import MCPManager, MCPServerConfig
        from llmasos.system.tools.registry import Tool

        if self.services.mcp is None:
            self.services.mcp = MCPManager()
        for raw in manifest.mcp_servers:
            cfg = MCPServerConfig.model_validate(raw)
            key = f"{manifest.name}.{cfg.name}"
            conn = await self.services.mcp.add(cfg.model_copy(update={"name": key}))
            for t in await conn.list_tools():
                async def call(ctx: Any, args: dict, _server: str = key, _name: str = t.name) -> str:
                    return await self.services.mcp.call(_server, _name, args)

                self.services.tools.register(Tool(f"{cfg.name}__{t.name}"[:64], t.description or t.name,
                                                  t.input_schema or {"type": "object"}, call, timeout=cfg.timeout,
                                                  side_effects=True), manifest.name)

    def apps(self) -> list[Manifest]:
        return self.services.apps.list()

    def handlers(self, name: str) -> list[str]:
        """The handlers an installed app runs here (none for an API client or a manifest without code)."""
        a = self._apps.get(name)
        return sorted(a.handlers()) if a is not None else []

    def app(self, name: str) -> App:
        a = self._apps.get(name)
        if a is None:
            raise NotFound(f"no app {name!r}")
        return a

    def context(self, app: str, user: str = "") -> AppContext:
        """The SDK context of an app (or of one user of it), talking to this OS in-process."""
        self.services.apps.get(app)
        return AppContext(app, LocalTransport(self.syscalls, Principal.for_app(app, user)), user)

    # -- running handlers as processes -----------------------------------------------------------------
    async def handle(self, app: str, handler: str, *, user: str = "", **args: Any) -> Any:
        """Run an app's handler as a process. If it raises it fails its own process (ProcessFailed); past the
        manifest's `handler_timeout` it is cancelled and its LLM requests aborted. The OS keeps running."""
        return await self.run_handler(app, handler, args, user=user)

    def _bound(self, app: str, handler: str, args: dict, user: str) -> tuple[App, Any, Any]:
        """The app, its handler and a context for it, the arguments checked against its signature."""
        a = self.app(app)
        fn = a.handlers().get(handler)
        if fn is None:
            raise NotFound(f"app {app!r} has no handler {handler!r}")
        ctx = self.context(app, user)
        try:
            inspect.signature(fn).bind(ctx, **args)
        except TypeError as exc:
            raise InvalidRequest(f"app {app!r} handler {handler!r}: {exc}") from exc
        return a, fn, ctx

    async def run_handler(self, app: str, handler: str, args: dict, *, user: str = "",
                          proc_out: list | None = None) -> Any:
        """`handle` with the arguments as a dict; `proc_out` receives the handler's process record. A streamed
        handler's pieces are joined (text) or listed."""
        a, fn, ctx = self._bound(app, handler, args, user)
        procs = self.services.procs
        proc = procs.spawn(app, str(ctx.transport.principal), "handler", session=args.get("session_id"),
                           priority=a.manifest.priority)
        if proc_out is not None:
            proc_out.append(proc)
        token = current_pid.set(proc.pid)
        try:
            task = asyncio.ensure_future(_collect(fn(ctx, **args)) if inspect.isasyncgenfunction(fn)
                                         else fn(ctx, **args))
        finally:
            current_pid.reset(token)
        procs.killers[proc.pid] = task.cancel
        procs.set_state(proc, ProcState.RUNNING)
        timeout = a.manifest.handler_timeout
        try:
            result = await asyncio.wait_for(task, timeout)
        except TimeoutError as exc:
            for child in procs.ps(app, include_finished=False):
                if child.parent == proc.pid:
                    # In a worker thread, so the kill returns once the kernel has freed the child's blocks.
                    await asyncio.to_thread(procs.kill, child.pid)
            if self.llm is not None:
                await self.llm.settle()  # the cancelled children's aborts are applied: their blocks are free
            procs.finish(proc, ProcState.FAILED, f"timed out after {timeout:g}s")
            raise ProcessFailed(f"app {app!r} handler {handler!r} timed out after {timeout:g}s (pid {proc.pid})") from exc
        except asyncio.CancelledError as exc:
            if proc.state is ProcState.KILLED:
                raise ProcessFailed(f"app {app!r} handler {handler!r} was killed (pid {proc.pid})") from exc
            raise
        except SystemCallError as exc:
            procs.finish(proc, ProcState.FAILED, exc.message)
            raise
        except Exception as exc:
            procs.finish(proc, ProcState.FAILED, f"{type(exc).__name__}: {exc}")
            log.warning("app %s handler %s failed: %s", app, handler, exc)
            raise ProcessFailed(f"app {app!r} handler {handler!r} failed: {type(exc).__name__}: {exc} "
                                f"(pid {proc.pid})") from exc
        procs.finish(proc)
        return result

    async def stream_handler(self, app: str, handler: str, args: dict, *, user: str = "",
                             proc_out: list | None = None) -> AsyncIterator[Any]:
        """A handler's pieces as they come, run as a handler process (a plain handler yields its one result).
        The name and arguments are checked before anything runs."""
        a, fn, ctx = self._bound(app, handler, args, user)

        async def whole() -> AsyncIterator[Any]:
            yield await fn(ctx, **args)

        pieces = fn(ctx, **args) if inspect.isasyncgenfunction(fn) else whole()
        async for piece in self._streamed(a, ctx, handler, args.get("session_id"), pieces, proc_out):
            yield piece

    async def handle_stream(self, app: str, session_id: str, message: str, *, user: str = "",
                            proc_out: list | None = None) -> AsyncIterator[str]:
        """The app's chat reply piece by piece (`App.chat_stream`), run as a handler process like `handle`."""
        a = self.app(app)
        ctx = self.context(app, user)
        async for piece in self._streamed(a, ctx, "chat", session_id, a.chat_stream(ctx, session_id, message),
                                          proc_out):
            yield piece

    async def _streamed(self, a: App, ctx: AppContext, handler: str, session_id: str | None,
                        pieces: AsyncIterator[Any], proc_out: list | None) -> AsyncIterator[Any]:
        app = a.manifest.name
        procs = self.services.procs
        proc = procs.spawn(app, str(ctx.transport.principal), "handler", session=session_id,
                           priority=a.manifest.priority)
        if proc_out is not None:
            proc_out.append(proc)
        procs.set_state(proc, ProcState.RUNNING)
        token = current_pid.set(proc.pid)
        try:
            async with asyncio.timeout(a.manifest.handler_timeout):
                async for piece in pieces:
                    yield piece
        except TimeoutError as exc:
            procs.finish(proc, ProcState.FAILED, "timed out")
            raise ProcessFailed(f"app {app!r} {handler} timed out after {a.manifest.handler_timeout:g}s") from exc
        except SystemCallError as exc:
            procs.finish(proc, ProcState.FAILED, exc.message)
            raise
        except Exception as exc:
            procs.finish(proc, ProcState.FAILED, f"{type(exc).__name__}: {exc}")
            raise ProcessFailed(f"app {app!r} {handler} failed: {type(exc).__name__}: {exc} (pid {proc.pid})") from exc
        finally:
            with contextlib.suppress(ValueError):  # an abandoned stream may be closed from another context
                current_pid.reset(token)
            procs.finish(proc)

    # -- sync conveniences -----------------------------------------------------------------------------
    def run(self, coro: Coroutine) -> Any:
        """Run a coroutine on the OS's event loop from synchronous code."""
        if self._closed:
            coro.close()
            raise SystemCallError("the OS is shut down")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            coro.close()
            raise RuntimeError("a synchronous OS method was called from inside the OS's event loop (it would wait "
                               "on itself): await the async API (OS.handle, AppContext) there instead")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def submit(self, coro: Coroutine) -> Any:
        """Start a coroutine on the OS's event loop (the server runs there); returns a concurrent Future."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def call(self, app: str, syscall: str, /, *, as_user: str = "", **args: Any) -> Any:
        """One system call as the app (or as `as_user` of it), synchronously."""
        return self.run(self.syscalls.call(Principal.for_app(app, as_user), syscall, args))

    def admin_call(self, syscall: str, app: str, /, **args: Any) -> Any:
        return self.run(self.syscalls.call(ADMIN, syscall, args, app=app))

    def chat(self, app: str, session_id: str, message: str, user: str = "") -> Any:
        """Send a message to an app's chat handler (sync)."""
        return self.run(self.handle(app, "chat", user=user, session_id=session_id, message=message))

    def ps(self, app: str | None = None, state: str | None = None) -> list[dict]:
        self.services.refresh_states()
        return [p.as_dict() for p in self.services.procs.ps(app, state)]

    def kill(self, pid: int) -> dict:
        return self.services.procs.kill(pid).as_dict()

    def renice(self, pid: int, priority: int) -> dict:
        return self.services.procs.renice(pid, priority).as_dict()

    def create_key(self, app: str | None, user: str = "", admin: bool = False) -> str:
        return issue_key(self.services.keys, self.services.apps, app, user, admin)

    def info(self) -> dict:
        eng = self.llm.engine if self.llm is not None else None
        return {"model": str(getattr(eng, "model_source", None)) if eng else None, "window": self.services.window,
                "embedder": self.embedder.id, "database": self.db.dialect, "pgvector": self.db.pgvector,
                "apps": [m.name for m in self.apps()], "data_dir": str(self.config.data_dir)}

    # -- shutdown --------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            calls = getattr(self, "llm_calls", None)
            if calls is not None and calls.background:
                fut = asyncio.run_coroutine_threadsafe(_drain(calls.background), self._loop)
                fut.result(timeout=30)
            mcp = getattr(getattr(self, "services", None), "mcp", None)
            if mcp is not None:
                asyncio.run_coroutine_threadsafe(mcp.close_all(), self._loop).result(timeout=30)
        finally:
            if self._owns_llm and getattr(self, "llm", None) is not None:
                self.llm.shutdown()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if getattr(self, "db", None) is not None:
                self.db.close()

    def __enter__(self) -> OS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


async def _drain(tasks: set[asyncio.Task]) -> None:
    """Let background summaries finish (briefly: an unfinished one is simply redone next time), then cancel."""
    pending = list(tasks)
    if not pending:
        return
    _done, still = await asyncio.wait(pending, timeout=5)
    for t in still:
        t.cancel()


async def _collect(pieces: AsyncIterator[Any]) -> Any:
    """A streamed handler called whole: its text joined, or its pieces listed when they are not all text."""
    out = [p async for p in pieces]
    return "".join(out) if all(isinstance(p, str) for p in out) else out
