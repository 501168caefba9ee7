"""Writing an app: a class with a manifest and async handlers, or a decorated function.

    class Notes(App):
        manifest = Manifest(name="notes", permissions=["llm", "storage"])

        async def chat(self, ctx, session_id, message):          # the conversational entry point
            return (await ctx.llm.chat(session=session_id, message=message))["text"]

        @handler
        async def save(self, ctx, title, text):                  # any other named handler
            await ctx.storage.put_doc("notes", title, {"text": text})
            return {"saved": title}
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

from llmasos.system.manifest import Manifest
from llmasos.system.tools.registry import Tool

HANDLER_ATTR = "__llmasos_handler__"


def handler(fn: Callable) -> Callable:
    """Mark an async method as a handler callable by name (`OS.run(app, name, **args)`, and an HTTP route). An
    async generator is a streamed handler: its pieces go out as they come (`OS.stream_handler`, the route's
    `/stream` form); called whole, its text pieces are joined."""
    if not (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)):
        raise TypeError(f"handler {fn.__name__} must be an async function or an async generator")
    setattr(fn, HANDLER_ATTR, True)
    return fn


class App:
    manifest: Manifest

    def tools(self) -> list[Tool]:
        """The app's own tools, visible only to it (called once at install)."""
        return []

    async def chat(self, ctx: Any, session_id: str, message: str) -> str:
        out = await ctx.llm.chat(session=session_id, message=message)
        return out["text"]

    async def chat_stream(self, ctx: Any, session_id: str, message: str) -> AsyncIterator[str]:
        """The reply in pieces as it is generated; by default the whole `chat` reply at once. Override it (and
        make `chat` join it) to stream."""
        yield str(await self.chat(ctx, session_id, message))

    def handlers(self) -> dict[str, Callable]:
        out = {"chat": self.chat}
        for name, member in inspect.getmembers(type(self)):
            if getattr(member, HANDLER_ATTR, False):
                out[name] = getattr(self, name)
        return out


class FunctionApp(App):
    """An app made from one decorated function: its only handler is `chat` (or the function's name)."""

    def __init__(self, manifest: Manifest, fn: Callable) -> None:
        self.manifest = manifest
        self._fn = fn

    async def chat(self, ctx: Any, session_id: str, message: str) -> Any:
        return await self._fn(ctx, session_id, message)

    def handlers(self) -> dict[str, Callable]:
        return {"chat": self.chat, self._fn.__name__: self.chat}


def app(name: str, **manifest: Any) -> Callable[[Callable], FunctionApp]:
    """`@app("echo", permissions=["llm"])` on `async def f(ctx, session_id, message)` makes an installable app."""

    def wrap(fn: Callable) -> FunctionApp:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"app function {fn.__name__} must be async")
        return FunctionApp(Manifest(name=name, **manifest), fn)

    return wrap
