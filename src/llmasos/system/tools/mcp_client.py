"""External tools from MCP servers: each server runs as a real subprocess over stdio, behind one long-lived
session that serves many calls.

Built on the official `mcp` package (2.x): `mcp.Client` over `mcp.client.stdio.stdio_client`. The client's
context managers open anyio task groups, which must be exited by the task that entered them; so every
connection gets a small owner task that enters them, waits for `close()`, and exits them. Callers may then
start, call and close from any task of the same asyncio loop (asyncio only, not trio).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types
from jsonschema import SchemaError, validators
from jsonschema.exceptions import best_match
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmasos.system.errors import InvalidRequest, NotFound, SystemCallError

logger = logging.getLogger(__name__)

# A paginating server that never stops must not hang a listing.
_MAX_LIST_PAGES = 100
# How long to wait for the last stderr bytes of a server that died, to quote them in the error.
_STDERR_SETTLE_S = 0.5


class MCPServerUnavailable(SystemCallError):
    """The server could not be started, or its connection is gone."""

    status, type, code = 502, "server_error", "mcp_server_unavailable"


class MCPToolFailed(SystemCallError):
    """The server ran the tool and reported failure (`isError`), or answered the call with an error."""

    status, type, code = 502, "server_error", "mcp_tool_failed"


class MCPTimeout(SystemCallError):
    status, type, code = 504, "server_error", "mcp_timeout"


class MCPServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Identifier-like because it namespaces tools and shows up in logs and error messages.
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    # Merged over the few variables the mcp package passes through (HOME, PATH, ...); the rest of our
    # environment (API keys among it) is deliberately not inherited.
    env: dict[str, str] | None = None
    cwd: str | None = None
    # Bounds the start handshake and is the default per-call timeout.
    timeout: float = Field(default=30.0, gt=0)


@dataclass
class MCPTool:
    server: str
    name: str
    description: str
    input_schema: dict


class _StderrTail:
    """Receives a server's stderr and keeps only its last few KiB, so a failed start can quote the
    server's own complaint while a chatty long-running server cannot fill memory or disk."""

    def __init__(self, server: str, limit: int = 4096) -> None:
        read_fd, write_fd = os.pipe()
        self.writer = os.fdopen(write_fd, "w")  # handed to the child as its stderr
        self._read_fd = read_fd
        self._limit = limit
        self._tail = bytearray()
        self._lock = threading.Lock()
        # A thread, not a task: the pipe is drained even while the event loop is busy or shutting down.
        self._thread = threading.Thread(target=self._drain, name=f"mcp-stderr-{server}", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        try:
            while chunk := os.read(self._read_fd, 4096):
                with self._lock:
                    self._tail += chunk
                    del self._tail[: -self._limit]
        finally:
            os.close(self._read_fd)

    def release_writer(self) -> None:
        """Drop our copy of the write end once the child has its own, so EOF follows the child's exit."""
        if not self.writer.closed:
            self.writer.close()

    def text(self, settle: float = 0.0) -> str:
        self._thread.join(settle)
        with self._lock:
            return self._tail.decode("utf-8", errors="replace").strip()


def _innermost(exc: BaseException) -> BaseException:
    """The failure a task group wrapped, so errors name the cause rather than 'unhandled errors in a TaskGroup'."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        real = [e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)]
        exc = (real or list(exc.exceptions))[0]
    return exc


def _result_text(result: mcp_types.CallToolResult) -> str:
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.EmbeddedResource) and isinstance(
            block.resource, mcp_types.TextResourceContents
        ):
            parts.append(block.resource.text)
        else:
            # Binary content cannot go into a text result; say what was there rather than drop it silently.
            kind = getattr(block, "mime_type", None) or getattr(block, "uri", None) or ""
            parts.append(f"[{block.type}{': ' + str(kind) if kind else ''}]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(parts)


class MCPConnection:
    """One MCP server subprocess and its session. Use as `async with MCPConnection(cfg) as conn:` or
    `await conn.start()` ... `await conn.close()`."""

    def __init__(self, config: MCPServerConfig) -> None:
        self.config = config
        self._client: Client | None = None
        self._owner: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._stop: asyncio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._stderr: _StderrTail | None = None
        self._closed = False
        self._tools: dict[str, MCPTool] = {}
        self._validators: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def connected(self) -> bool:
        return self._client is not None

    def stderr_tail(self) -> str:
        """The last few KiB the server wrote to stderr."""
        return self._stderr.text() if self._stderr else ""

    async def __aenter__(self) -> MCPConnection:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Launch the server and complete the MCP handshake; fails within `config.timeout` at most."""
        if self._owner is not None:
            raise InvalidRequest(f"MCP server {self.name!r} was already started")
        self._ready = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        self._owner = asyncio.create_task(self._own(self._ready, self._stop), name=f"mcp-server:{self.name}")
        try:
            await asyncio.shield(self._ready)
        except BaseException:
            # A failed or cancelled start must not leave the owner (and maybe a child process) behind.
            await self.close()
            raise

    async def close(self) -> None:
        """Stop the session and the server process (stdin closed, then SIGTERM/SIGKILL if it lingers).
        Idempotent; never raises for a server that already died."""
        self._closed = True
        owner = self._owner
        if owner is None:
            return
        assert self._stop is not None
        self._stop.set()
        if self._scope is not None and self._ready is not None and not self._ready.done():
            self._scope.cancel()  # still handshaking: don't wait out the start timeout
        # Shielded so a caller cancelled mid-close cannot cut the shutdown short and leak the process.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(owner)
        if self._ready is not None and self._ready.done() and not self._ready.cancelled():
            self._ready.exception()  # a start nobody awaited any more must not log 'never retrieved'

    async def _own(self, ready: asyncio.Future[None], stop: asyncio.Event) -> None:
        """Owns the client's contexts for the connection's whole life; see the module docstring."""
        cfg = self.config
        stderr = self._stderr = _StderrTail(cfg.name)
        params = StdioServerParameters(command=cfg.command, args=cfg.args, env=cfg.env, cwd=cfg.cwd)
        try:
            with anyio.CancelScope(deadline=anyio.current_time() + cfg.timeout) as scope:
                self._scope = scope
                if stop.is_set():
                    scope.cancel()  # close() ran before this task did
                try:
                    # cache=None: tool listings must reflect the server now, not a TTL hint.
                    async with Client(stdio_client(params, errlog=stderr.writer), cache=None) as client:
                        stderr.release_writer()
                        scope.deadline = math.inf  # the timeout bounded the handshake only
                        self._client = client
                        if not ready.done():
                            ready.set_result(None)
                        await stop.wait()
                finally:
                    self._client = None
                    stderr.release_writer()
            if scope.cancelled_caught and not ready.done():
                detail = (
                    "closed while starting" if stop.is_set() else f"no MCP handshake within {cfg.timeout:g}s"
                )
                ready.set_exception(self._start_error(detail))
        except BaseException as exc:  # the owner is the boundary: everything is reported through `ready`
            if not ready.done():
                ready.set_exception(self._start_error(self._describe_start_failure(_innermost(exc))))
            elif not isinstance(exc, asyncio.CancelledError):
                logger.warning("MCP server %r: session ended with an error: %r", cfg.name, _innermost(exc))
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _describe_start_failure(self, exc: BaseException) -> str:
        if isinstance(exc, FileNotFoundError):
            return f"command {self.config.command!r} not found"
        if isinstance(exc, PermissionError):
            return f"command {self.config.command!r} is not executable"
        if isinstance(exc, MCPError) and exc.code == mcp_types.CONNECTION_CLOSED:
            return "the process exited or closed its output during the MCP handshake"
        return f"{type(exc).__name__}: {exc}"

    def _start_error(self, detail: str) -> MCPServerUnavailable:
        stderr = self._stderr.text(settle=_STDERR_SETTLE_S) if self._stderr else ""
        tail = f"; its stderr ends with: {stderr[-1000:]}" if stderr else ""
        return MCPServerUnavailable(f"MCP server {self.name!r} failed to start: {detail}{tail}")

    def _require_client(self) -> Client:
        if self._client is None:
            state = "was closed" if self._closed else "is not started"
            raise MCPServerUnavailable(f"MCP server {self.name!r} {state}")
        return self._client

    def _map_error(self, exc: MCPError, what: str, timeout: float) -> SystemCallError:
        if exc.code == mcp_types.REQUEST_TIMEOUT:
            return MCPTimeout(f"{what} on MCP server {self.name!r} timed out after {timeout:g}s")
        if exc.code == mcp_types.CONNECTION_CLOSED:
            stderr = self.stderr_tail()
            tail = f"; its stderr ends with: {stderr[-1000:]}" if stderr else ""
            return MCPServerUnavailable(f"MCP server {self.name!r} closed the connection{tail}")
        if exc.code == mcp_types.INVALID_PARAMS:
            return InvalidRequest(f"MCP server {self.name!r} rejected {what}: {exc.message}")
        return MCPToolFailed(f"MCP server {self.name!r} failed {what}: {exc.message}")

    async def list_tools(self) -> list[MCPTool]:
        """The server's tools, fetched now; also refreshes what `call_tool` validates arguments against."""
        client = self._require_client()
        timeout = self.config.timeout
        tools: list[MCPTool] = []
        cursor: str | None = None
        try:
            with anyio.fail_after(timeout):
                for _ in range(_MAX_LIST_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    tools += [
                        MCPTool(self.name, t.name, t.description or "", dict(t.input_schema))
                        for t in page.tools
                    ]
                    cursor = page.next_cursor
                    if cursor is None:
                        break
        except TimeoutError:
            raise MCPTimeout(
                f"listing tools on MCP server {self.name!r} timed out after {timeout:g}s"
            ) from None
        except MCPError as exc:
            raise self._map_error(exc, "listing tools", timeout) from exc
        self._tools = {t.name: t for t in tools}
        self._validators = {}
        return tools

    def known_tool(self, name: str) -> MCPTool | None:
        """The tool as of the last `list_tools`, or None."""
        return self._tools.get(name)

    def _check_arguments(self, name: str, arguments: dict) -> None:
        tool = self._tools.get(name)
        if tool is None:
            return  # never listed: the server validates
        validator = self._validators.get(name)
        if validator is None:
            cls = validators.validator_for(tool.input_schema)
            try:
                cls.check_schema(tool.input_schema)
            except SchemaError:
                return  # the server's schema is broken; let the server judge its own arguments
            validator = self._validators[name] = cls(tool.input_schema)
        error = best_match(validator.iter_errors(arguments))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or None
            raise InvalidRequest(
                f"invalid arguments for MCP tool {name!r} on server {self.name!r}: {error.message}",
                param=where,
            )

    async def call_tool(self, name: str, arguments: dict, timeout: float | None = None) -> str:
        """Run a tool and return its text content joined by newlines.

        A timeout abandons the call (the server is sent a cancellation) and leaves the session usable.
        """
        if not isinstance(arguments, dict):
            raise InvalidRequest("MCP tool arguments must be a JSON object", param="arguments")
        limit = self.config.timeout if timeout is None else timeout
        if not limit > 0:
            raise InvalidRequest("timeout must be positive", param="timeout")
        client = self._require_client()
        self._check_arguments(name, arguments)
        what = f"tool {name!r}"
        try:
            # read_timeout_seconds is the SDK's own clock (it cancels the request on the server); the outer
            # limit also covers a write blocked on a server that stopped reading its stdin.
            with anyio.fail_after(limit):
                result = await client.call_tool(name, arguments, read_timeout_seconds=limit)
        except TimeoutError:
            raise MCPTimeout(f"{what} on MCP server {self.name!r} timed out after {limit:g}s") from None
        except MCPError as exc:
            raise self._map_error(exc, what, limit) from exc
        except ValidationError as exc:
            raise MCPToolFailed(f"MCP server {self.name!r} returned a malformed result for {what}") from exc
        text = _result_text(result)
        if result.is_error:
            raise MCPToolFailed(f"MCP tool {name!r} on server {self.name!r} failed: {text or 'no message'}")
        return text


class MCPManager:
    """The MCP servers an OS instance uses, by name."""

    def __init__(self) -> None:
        self._connections: dict[str, MCPConnection] = {}

    async def __aenter__(self) -> MCPManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close_all()

    def servers(self) -> list[str]:
        return sorted(self._connections)

    def get(self, server: str) -> MCPConnection:
        conn = self._connections.get(server)
        if conn is None:
            raise NotFound(f"no MCP server named {server!r}", param="server")
        return conn

    async def add(self, config: MCPServerConfig | dict) -> MCPConnection:
        """Start the server and list its tools; on failure nothing is registered."""
        cfg = config if isinstance(config, MCPServerConfig) else MCPServerConfig.model_validate(config)
        if cfg.name in self._connections:
            raise InvalidRequest(f"MCP server {cfg.name!r} is already added", param="name")
        conn = MCPConnection(cfg)
        # Reserved before the first await so a concurrent add of the same name is refused.
        self._connections[cfg.name] = conn
        try:
            await conn.start()
            await conn.list_tools()
        except BaseException:
            del self._connections[cfg.name]
            await conn.close()
            raise
        return conn

    async def remove(self, server: str) -> None:
        conn = self.get(server)
        del self._connections[server]
        await conn.close()

    async def tools(self) -> list[MCPTool]:
        """Every server's tools, fetched now. A server that died or hangs is logged and left out, so one
        broken server does not hide the others' tools."""
        tools: list[MCPTool] = []
        for conn in list(self._connections.values()):
            try:
                tools += await conn.list_tools()
            except (MCPServerUnavailable, MCPTimeout) as exc:
                logger.warning("leaving out the tools of MCP server %r: %s", conn.name, exc.message)
        return tools

    async def call(self, server: str, name: str, arguments: dict, timeout: float | None = None) -> str:
        conn = self.get(server)
        if conn.known_tool(name) is None:
            await conn.list_tools()  # the server may have added it since we last looked
            if conn.known_tool(name) is None:
                raise NotFound(f"MCP server {server!r} has no tool {name!r}", param="name")
        return await conn.call_tool(name, arguments, timeout=timeout)

    async def close_all(self) -> None:
        connections = list(self._connections.values())
        self._connections.clear()
        await asyncio.gather(*(conn.close() for conn in connections))
