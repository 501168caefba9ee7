"""How an app's context reaches the OS: every method is a named system call with JSON-able arguments, so the
in-process transport here and the HTTP transport of the server are interchangeable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol


class Transport(Protocol):
    async def call(self, name: str, args: dict) -> Any: ...

    def stream(self, name: str, args: dict) -> AsyncIterator[Any]: ...


class LocalTransport:
    """Calls the OS's syscall layer in this process, as the given principal."""

    def __init__(self, syscalls: Any, principal: Any) -> None:
        self.syscalls = syscalls
        self.principal = principal

    async def call(self, name: str, args: dict) -> Any:
        return await self.syscalls.call(self.principal, name, args)

    def stream(self, name: str, args: dict) -> AsyncIterator[Any]:
        return self.syscalls.stream(self.principal, name, args)
