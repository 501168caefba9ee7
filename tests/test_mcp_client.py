"""The MCP client against a real server subprocess (tests/mcp_server_example.py) over stdio."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import psutil
import pydantic
import pytest

from llmasos.system.errors import InvalidRequest, NotFound, SystemCallError
from llmasos.system.tools.mcp_client import (
    MCPConnection,
    MCPManager,
    MCPServerConfig,
    MCPServerUnavailable,
    MCPTimeout,
    MCPToolFailed,
)

SERVER = Path(__file__).parent / "mcp_server_example.py"


def example_config(name: str = "example", **kw) -> MCPServerConfig:
    return MCPServerConfig(name=name, command=sys.executable, args=[str(SERVER)], timeout=20.0, **kw)


def server_children() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if str(SERVER) in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def assert_gone(pid: int) -> None:
    with pytest.raises(psutil.NoSuchProcess):
        proc = psutil.Process(pid)
        # A zombie still has a pid; only a reaped child counts as cleanly shut down.
        raise AssertionError(f"server process {pid} is still there ({proc.status()})")


def test_connection_round_trip_and_clean_close() -> None:
    async def scenario() -> int:
        conn = MCPConnection(example_config())
        await conn.start()
        (child,) = server_children()

        tools = {t.name: t for t in await conn.list_tools()}
        assert set(tools) == {"add", "echo", "fail", "slow"}
        assert all(t.server == "example" for t in tools.values())
        assert set(tools["add"].input_schema["properties"]) == {"a", "b"}
        assert tools["add"].input_schema["properties"]["a"]["type"] == "integer"
        assert tools["echo"].input_schema["required"] == ["text"]
        assert tools["slow"].input_schema["properties"]["seconds"]["type"] == "number"
        assert tools["add"].description == "Add two integers."

        assert await conn.call_tool("add", {"a": 2, "b": 3}) == "5"
        text = "héllo wörld ✓ 你好 🙂"
        assert await conn.call_tool("echo", {"text": text}) == text

        with pytest.raises(MCPToolFailed, match="boom") as failed:
            await conn.call_tool("fail", {"message": "boom"})
        assert isinstance(failed.value, SystemCallError) and failed.value.status == 502

        # Arguments are checked against the listed input schema before anything is sent.
        with pytest.raises(InvalidRequest, match="invalid arguments") as bad:
            await conn.call_tool("add", {"a": "two", "b": 3})
        assert bad.value.param == "a"
        with pytest.raises(InvalidRequest):
            await conn.call_tool("add", ["not", "a", "dict"])  # type: ignore[arg-type]

        started = time.monotonic()
        with pytest.raises(MCPTimeout, match=r"timed out after 0\.3s"):
            await conn.call_tool("slow", {"seconds": 10}, timeout=0.3)
        assert time.monotonic() - started < 3

        # Documented behaviour: a timeout abandons only that call; the session stays open and usable.
        assert conn.connected
        assert await conn.call_tool("add", {"a": 40, "b": 2}) == "42"
        assert await conn.call_tool("slow", {"seconds": 0.05}) == "slept 0.05s"

        # close() from another task than the one that started the connection.
        await asyncio.create_task(conn.close())
        assert not conn.connected
        with pytest.raises(MCPServerUnavailable, match="was closed"):
            await conn.call_tool("add", {"a": 1, "b": 1})
        await conn.close()  # idempotent
        return child.pid

    pid = asyncio.run(scenario())
    assert_gone(pid)
    assert server_children() == []


def test_bad_command_fails_fast_naming_the_server() -> None:
    async def scenario() -> None:
        conn = MCPConnection(MCPServerConfig(name="ghost", command="/nonexistent/mcp-server-binary"))
        started = time.monotonic()
        with pytest.raises(MCPServerUnavailable, match=r"'ghost' failed to start: command .* not found"):
            await conn.start()
        assert time.monotonic() - started < 2
        assert not conn.connected

    asyncio.run(scenario())


def test_server_that_exits_during_handshake_quotes_its_stderr() -> None:
    script = "import sys; print('config file missing', file=sys.stderr); sys.exit(3)"
    cfg = MCPServerConfig(name="crasher", command=sys.executable, args=["-c", script])

    async def scenario() -> None:
        with pytest.raises(MCPServerUnavailable) as err:
            await MCPConnection(cfg).start()
        assert "'crasher' failed to start" in err.value.message
        assert "config file missing" in err.value.message

    asyncio.run(scenario())


def test_server_that_never_answers_times_out_instead_of_hanging() -> None:
    # Reads stdin to EOF and says nothing: a process that is alive but does not speak MCP.
    cfg = MCPServerConfig(
        name="mute", command=sys.executable, args=["-c", "import sys; sys.stdin.read()"], timeout=0.5
    )

    async def scenario() -> None:
        started = time.monotonic()
        with pytest.raises(
            MCPServerUnavailable, match=r"'mute' failed to start: no MCP handshake within 0\.5s"
        ):
            await MCPConnection(cfg).start()
        assert time.monotonic() - started < 4

    asyncio.run(scenario())
    assert not [
        p for p in psutil.Process().children(recursive=True) if "sys.stdin.read()" in " ".join(p.cmdline())
    ]


def test_cancelled_or_closed_start_leaves_no_process() -> None:
    cfg = MCPServerConfig(
        name="mute", command=sys.executable, args=["-c", "import sys; sys.stdin.read()"], timeout=30
    )

    async def scenario() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(MCPConnection(cfg).start(), 0.3)
        conn = MCPConnection(cfg)
        starting = asyncio.create_task(conn.start())
        await asyncio.sleep(0.3)
        await conn.close()  # from another task, mid-handshake: must not wait out the 30 s start timeout
        with pytest.raises(MCPServerUnavailable, match="closed while starting"):
            await starting

    started = time.monotonic()
    asyncio.run(scenario())
    assert time.monotonic() - started < 5
    assert not [
        p for p in psutil.Process().children(recursive=True) if "sys.stdin.read()" in " ".join(p.cmdline())
    ]


def test_manager_routes_calls_and_reports_unknown_names() -> None:
    async def scenario() -> int:
        async with MCPManager() as manager:
            await manager.add(example_config("calc"))
            assert manager.servers() == ["calc"]
            with pytest.raises(InvalidRequest, match="already added"):
                await manager.add(example_config("calc"))

            tools = await manager.tools()
            assert {(t.server, t.name) for t in tools} == {
                ("calc", "add"),
                ("calc", "echo"),
                ("calc", "fail"),
                ("calc", "slow"),
            }
            assert await manager.call("calc", "add", {"a": -7, "b": 10}) == "3"
            with pytest.raises(NotFound, match="no MCP server named 'nope'"):
                await manager.call("nope", "add", {"a": 1, "b": 2})
            with pytest.raises(NotFound, match="has no tool 'multiply'"):
                await manager.call("calc", "multiply", {"a": 1, "b": 2})
            with pytest.raises(MCPTimeout):
                await manager.call("calc", "slow", {"seconds": 5}, timeout=0.2)
            assert await manager.call("calc", "echo", {"text": "still here"}) == "still here"

            # A failed add registers nothing.
            with pytest.raises(MCPServerUnavailable):
                await manager.add(MCPServerConfig(name="broken", command="/nonexistent/x"))
            assert manager.servers() == ["calc"]
            (child,) = server_children()
        assert manager.servers() == []
        return child.pid

    pid = asyncio.run(scenario())
    assert_gone(pid)


def test_server_dying_mid_session_is_reported_not_hung() -> None:
    async def scenario() -> None:
        async with MCPManager() as manager:
            await manager.add(example_config("fragile"))
            (child,) = server_children()
            child.kill()
            child.wait(5)
            with pytest.raises(MCPServerUnavailable, match="'fragile' closed the connection"):
                await manager.call("fragile", "add", {"a": 1, "b": 2}, timeout=5)
            # The dead server's tools are left out of the listing rather than failing it.
            assert await manager.tools() == []

    asyncio.run(scenario())
    assert server_children() == []


def test_config_is_strict() -> None:
    with pytest.raises(pydantic.ValidationError):
        MCPServerConfig(name="has space", command="x")
    with pytest.raises(pydantic.ValidationError):
        MCPServerConfig(name="ok", command="x", unexpected=True)
    with pytest.raises(pydantic.ValidationError):
        MCPServerConfig(name="ok", command="x", timeout=0)
    cfg = MCPServerConfig(name="fs-server_2", command="npx", args=["-y", "pkg"], env={"TOKEN": "t"})
    assert cfg.timeout == 30.0 and cfg.cwd is None
