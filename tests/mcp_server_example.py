"""A tiny stdio MCP server the MCP client tests launch as a real subprocess.

Run it as `python tests/mcp_server_example.py`; it speaks MCP over stdin/stdout until stdin closes.
"""

from __future__ import annotations

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

# WARNING keeps the expected `fail` calls from logging to the test run's stderr.
server = MCPServer("llmasos-example", log_level="WARNING")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def fail(message: str) -> str:
    """Always fail with the given message."""
    raise ToolError(message)


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep for the given number of seconds, then say so."""
    await anyio.sleep(seconds)
    return f"slept {seconds}s"


if __name__ == "__main__":
    server.run("stdio")
