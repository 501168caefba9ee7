"""`assistant`: general chat with all three memory tiers and the built-in tools. Installed by default; what
`llmasos chat` opens when no app is named."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from llmasos.sdk import App, Manifest, handler

SYSTEM_PROMPT = ("You are a helpful assistant running on LLMasOS. Answer clearly and briefly. Use what you "
                 "remember about the user when it helps.")
FACTS, FACTS_LIMIT = "facts about the user", 1500
TOOLS = ["calculator", "current_time", "memory_search", "memory_write"]
# Questions that a tool answers better than a small model's guess.
ARITHMETIC = re.compile(r"^[\s\d().+\-*/%^,]*\d[\s\d().+\-*/%^]*[+\-*/%^][\s\d().+\-*/%^]*\d[\s\d().]*$")
REMEMBER = re.compile(r"^\s*(?:please\s+)?remember(?:\s+that)?\s+(.+)$", re.IGNORECASE | re.DOTALL)


class Assistant(App):
    manifest = Manifest(
        name="assistant", version="0.1.0", description="General chat with memory and the built-in tools.",
        permissions=["llm", "embed", "memory.read", "memory.write", "storage"] + [f"tools:{t}" for t in TOOLS],
        priority=0, weight=1.0, latency_sensitive=True, system_prompt=SYSTEM_PROMPT,
    )

    async def chat(self, ctx: Any, session_id: str, message: str) -> str:
        return "".join([piece async for piece in self.chat_stream(ctx, session_id, message)]).strip()

    async def chat_stream(self, ctx: Any, session_id: str, message: str) -> AsyncIterator[str]:
        text = message.strip()
        m = REMEMBER.match(text)
        if m:
            # Asked to remember: a pinned fact (in every prompt of this user) and a long-term memory item.
            fact = m.group(1).strip().rstrip(".")
            await ctx.tools.call("memory_write", {"text": fact}, session=session_id)
            facts = (await ctx.memory.core()).get(FACTS, "")
            lines = [ln for ln in (facts.splitlines() + [f"- {fact}"]) if ln.strip()]
            while len("\n".join(lines)) > FACTS_LIMIT and len(lines) > 1:
                lines.pop(0)  # the oldest fact goes first; it stays searchable in long-term memory
            await ctx.memory.set_core(FACTS, "\n".join(lines)[-FACTS_LIMIT:])
            reply = f"Noted. I will remember that {fact}."
            await ctx.memory.append(session_id, "user", message)
            await ctx.memory.append(session_id, "assistant", reply)
            yield reply
            return
        expr = _arithmetic(text)
        if expr is not None:
            res = await ctx.tools.call("calculator", {"expression": expr})
            await ctx.memory.append(session_id, "user", message)
            reply = f"{expr} = {_result(res['content'])}"
            await ctx.memory.append(session_id, "assistant", reply)
            yield reply
            return
        async for item in ctx.llm.stream(session=session_id, message=message, max_tokens=256, temperature=0.3,
                                         top_p=0.9, repetition_penalty=1.1):
            if item["delta"]:
                yield item["delta"]

    @handler
    async def ask_with_tools(self, ctx: Any, session_id: str, message: str, max_steps: int = 3) -> dict:
        """Let the model pick tools itself (structured output keeps its calls valid)."""
        return await ctx.llm.chat(session=session_id, message=message, tools=TOOLS, run_tools=True,
                                  max_steps=max_steps, max_tokens=200, temperature=0.0)


def _arithmetic(text: str) -> str | None:
    candidate = text.rstrip("?=. ").removeprefix("what is").removeprefix("What is").strip()
    if ARITHMETIC.match(candidate):
        return candidate.replace("^", "**")
    return None


def _result(content: str) -> str:
    import json

    try:
        return str(json.loads(content)["result"])
    except (ValueError, KeyError, TypeError):
        return content
