"""`writer`: a writing assistant. Titles, continuation (streamed), polishing in a named style, and correction
that returns minimal edits (character offsets into the original) rather than a rewritten text.

    from llmasos.apps.writer import Writer
    w = Writer()
    w.titles(text, n=5); w.continue_text(text, max_tokens=200); w.polish(text, style="formal")
    c = w.correct(text)                 # .text (corrected), .edits (each: start, end, original, replacement)

Spelling is classical (SymSpell and the English frequency and bigram dictionaries of `symspellpy`); the LLM
does what only it can (titles, continuation, style) and, when `llm_grammar` is on, proposes grammar fixes
that are accepted only as small local edits.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from llmasos.apps.writer import core
from llmasos.apps.writer.core import STYLES
from llmasos.apps.writer.spelling import Correction, Edit
from llmasos.sdk import App, Manifest, handler

__all__ = ["STYLES", "Correction", "Edit", "Writer", "WriterApp"]

_COMMAND = re.compile(r"^\s*(titles?|continue|polish|correct)(?:\s+([a-z]+))?\s*:\s*(.+)$",
                      re.IGNORECASE | re.DOTALL)
HELP = ("I am the writing assistant. Send a text to correct its spelling, or start with a command:\n"
        "  titles: TEXT | continue: TEXT | polish [style]: TEXT | correct: TEXT\n"
        f"Styles: {', '.join(STYLES)}.")


class WriterApp(App):
    manifest = Manifest(
        name="writer", version="0.1.0",
        description="Writing assistant: titles, continuation, polishing and minimal-edit correction.",
        permissions=["llm", "storage"], priority=0, weight=1.0, latency_sensitive=True,
        system_prompt="You are a careful writing assistant.",
    )

    async def _user_words(self, ctx: Any) -> set[str]:
        if "user_words" not in await ctx.storage.keys(prefix="user_words"):
            return set()
        return set(await ctx.storage.get("user_words") or [])

    @handler
    async def titles(self, ctx: Any, text: str, n: int = 5) -> dict:
        return {"titles": await core.titles(ctx, text, n)}

    @handler
    async def continue_text(self, ctx: Any, text: str, max_tokens: int = 200) -> dict:
        return {"continuation": await core.continue_text(ctx, text, max_tokens)}

    @handler
    async def continue_stream(self, ctx: Any, text: str, max_tokens: int = 200) -> AsyncIterator[str]:
        """The continuation as it is generated (the route's `/stream` form); called whole, the joined text."""
        async for piece in core.continue_stream(ctx, text, max_tokens):
            yield piece

    @handler
    async def polish(self, ctx: Any, text: str, style: str = "formal") -> dict:
        return {"text": await core.polish(ctx, text, style), "style": style}

    @handler
    async def correct(self, ctx: Any, text: str, llm_grammar: bool = False) -> dict:
        c = await core.correct(ctx, text, await self._user_words(ctx), llm_grammar=llm_grammar)
        return c.as_dict()

    @handler
    async def add_words(self, ctx: Any, words: list[str]) -> dict:
        """Words of the user's that the corrector must never change (names, jargon)."""
        known = await self._user_words(ctx)
        known.update(w.strip() for w in words if w.strip())
        await ctx.storage.set("user_words", sorted(known))
        return {"words": sorted(known)}

    @handler
    async def styles(self, ctx: Any) -> dict:
        return {"styles": STYLES}

    async def chat(self, ctx: Any, session_id: str, message: str) -> str:
        return "".join([p async for p in self.chat_stream(ctx, session_id, message)]).strip()

    async def chat_stream(self, ctx: Any, session_id: str, message: str) -> AsyncIterator[str]:
        m = _COMMAND.match(message)
        cmd, arg, text = (m.group(1).lower(), (m.group(2) or "").lower(), m.group(3).strip()) if m else \
            ("correct", "", message.strip())
        if not text:
            yield HELP
            return
        if cmd.startswith("title"):
            titles = await core.titles(ctx, text, 5)
            yield "\n".join(f"{i}. {t}" for i, t in enumerate(titles, 1))
        elif cmd == "continue":
            async for piece in core.continue_stream(ctx, text, 200):
                yield piece
        elif cmd == "polish":
            yield await core.polish(ctx, text, arg or "formal")
        else:
            c = await core.correct(ctx, text, await self._user_words(ctx))
            if not c.edits:
                yield f"No spelling errors found.\n{HELP}" if not m else "No spelling errors found."
                return
            lines = [c.text, ""] + [f"- {e.original!r} -> {e.replacement!r} (chars {e.start}-{e.end})"
                                    for e in c.edits]
            yield "\n".join(lines)


class Writer:
    """The library core. With no arguments it boots a private in-process OS on the default model the first
    time the LLM is needed (spelling correction needs no model). `ctx=` (an AppContext) and `runtime=` (a
    `Standalone`) let an OS or the tests pass their own. `user_words` are never corrected; `llm_grammar`
    turns on the LLM grammar pass of `correct` (off by default: see docs/apps/writer.md for its measured
    effect)."""

    def __init__(self, *, ctx: Any = None, runtime: Any = None) -> None:
        self._runtime = runtime
        self._ctx = ctx if ctx is not None else (runtime.ctx if runtime is not None else None)
        self.user_words: set[str] = set()
        self.llm_grammar = False

    @property
    def ctx(self) -> Any:
        if self._ctx is None:
            from llmasos.sdk import shared_runtime

            self._runtime = shared_runtime(WriterApp())
            self._ctx = self._runtime.ctx
        return self._ctx

    def _run(self, coro: Coroutine) -> Any:
        ctx = self.ctx
        if self._runtime is not None and self._runtime.ctx is ctx:
            return self._runtime.run(coro)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["v"] = asyncio.run(coro)
            except BaseException as exc:  # noqa: BLE001
                box["e"] = exc

        th = threading.Thread(target=target)
        th.start()
        th.join()
        if "e" in box:
            raise box["e"]
        return box["v"]

    def titles(self, text: str, n: int = 5) -> list[str]:
        return self._run(core.titles(self.ctx, text, n))

    def continue_text(self, text: str, max_tokens: int = 200) -> str:
        return self._run(core.continue_text(self.ctx, text, max_tokens))

    def polish(self, text: str, style: str = "formal") -> str:
        return self._run(core.polish(self.ctx, text, style))

    def correct(self, text: str) -> Correction:
        if not self.llm_grammar:  # classical only: no model, no event loop
            return Correction(*_spelling(text, self.user_words))
        return self._run(core.correct(self.ctx, text, self.user_words, llm_grammar=True))


def _spelling(text: str, user_words: set[str]) -> tuple[str, list[Edit]]:
    from llmasos.apps.writer.spelling import apply_edits

    edits = [] if core.is_chinese(text) else core.checker().check(text, user_words)
    return apply_edits(text, edits), edits
