"""`assistant`: general chat with all three memory tiers and the built-in tools. Installed by default; what
`llmasos chat` opens when no app is named."""

from __future__ import annotations

import re
from typing import Any

from llmasos.sdk import App, Manifest, handler

SYSTEM_PROMPT = ("You are a helpful assistant running on LLMasOS. Answer clearly and briefly. Use what you "
                 "remember about the user when it helps.")
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
        text = message.strip()
        m = REMEMBER.match(text)
        if m:
            # The user asked us to remember: long-term memory, so later sessions find it too.
            await ctx.tools.call("memory_write", {"text": m.group(1).strip()}, session=session_id)
        expr = _arithmetic(text)
        if expr is not None:
            res = await ctx.tools.call("calculator", {"expression": expr})
            value = res["content"]
            await ctx.memory.append(session_id, "user", message)
            reply = f"{expr} = {_result(value)}"
            await ctx.memory.append(session_id, "assistant", reply)
            return reply
        out = await ctx.llm.chat(session=session_id, message=message, max_tokens=256, temperature=0.3, top_p=0.9,
                                 repetition_penalty=1.1)
        return out["text"].strip()

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
