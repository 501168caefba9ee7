"""Tools as system calls: a name, a JSON Schema for the arguments (checked before every call), a timeout, the
permission that grants it (`tools:<name>`), and whether it has side effects or needs approval."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.exceptions import best_match

from llmasos.system.errors import InvalidRequest, NotFound, SystemCallError

TOOL_NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{0,63}$")
MAX_RESULT_CHARS = 16000


@dataclass
class ToolContext:
    """What a tool runs with: the caller's app and user (tools act in the caller's scope) and the OS."""

    app: str
    user: str
    session: str | None
    services: Any  # system.syscalls.Services


ToolFn = Callable[[ToolContext, dict], Any | Awaitable[Any]]


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict
    fn: ToolFn
    timeout: float = 10.0
    side_effects: bool = False
    sensitive: bool = False  # asks for approval before it runs, unless the app auto-approves it
    requires: tuple[str, ...] = ()  # permissions the tool's own work needs, besides tools:<name>
    owner: str | None = None  # the app that registered it; None for built-ins
    untrusted_output: bool = True  # its output is data from outside: wrapped and scanned
    _validator: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not TOOL_NAME_RE.match(self.name):
            raise InvalidRequest(f"tool name {self.name!r} must match {TOOL_NAME_RE.pattern}")
        if not isinstance(self.parameters, dict) or self.parameters.get("type", "object") != "object":
            raise InvalidRequest(f"tool {self.name!r}: parameters must be a JSON Schema of type object")
        try:
            Draft202012Validator.check_schema(self.parameters)
        except SchemaError as exc:
            raise InvalidRequest(f"tool {self.name!r}: invalid parameters schema: {exc.message}") from exc
        if not 0 < self.timeout <= 600:
            raise InvalidRequest(f"tool {self.name!r}: timeout must be in (0, 600] seconds")
        self._validator = Draft202012Validator(self.parameters)

    @property
    def permission(self) -> str:
        return f"tools:{self.name}"

    def validate(self, arguments: Any) -> dict:
        if not isinstance(arguments, dict):
            raise InvalidRequest(f"tool {self.name!r}: arguments must be a JSON object", param="arguments")
        err = best_match(self._validator.iter_errors(arguments))
        if err is not None:
            where = "/".join(str(p) for p in err.absolute_path) or "arguments"
            raise InvalidRequest(f"tool {self.name!r}: {where}: {err.message}", param="arguments")
        return arguments

    def openai(self) -> dict:
        """The tool in OpenAI's `tools` format."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    def info(self) -> dict:
        return {"name": self.name, "description": self.description, "parameters": self.parameters,
                "timeout": self.timeout, "side_effects": self.side_effects, "sensitive": self.sensitive,
                "permission": self.permission, "owner": self.owner}

    async def run(self, ctx: ToolContext, arguments: dict) -> str:
        """Validate, run with the timeout, and return the result as text (JSON for non-strings)."""
        args = self.validate(arguments)
        try:
            if inspect.iscoroutinefunction(self.fn):
                result = await asyncio.wait_for(self.fn(ctx, args), self.timeout)
            else:
                result = await asyncio.wait_for(asyncio.to_thread(self.fn, ctx, args), self.timeout)
        except TimeoutError as exc:
            raise SystemCallError(f"tool {self.name!r} timed out after {self.timeout:g}s", code="tool_timeout") from exc
        text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)
        if len(text) > MAX_RESULT_CHARS:
            text = text[:MAX_RESULT_CHARS] + f"\n[... {len(text) - MAX_RESULT_CHARS} characters cut]"
        return text


class ToolRegistry:
    """Built-in tools for everyone (subject to permissions) and each app's own tools, visible only to it."""

    def __init__(self) -> None:
        self._builtin: dict[str, Tool] = {}
        self._per_app: dict[str, dict[str, Tool]] = {}

    def register(self, tool: Tool, app: str | None = None) -> None:
        table = self._builtin if app is None else self._per_app.setdefault(app, {})
        tool.owner = app
        table[tool.name] = tool

    def unregister_app(self, app: str) -> None:
        self._per_app.pop(app, None)

    def get(self, name: str, app: str) -> Tool:
        tool = self._per_app.get(app, {}).get(name) or self._builtin.get(name)
        if tool is None:
            raise NotFound(f"no tool {name!r}")
        return tool

    def visible(self, app: str) -> list[Tool]:
        merged = dict(self._builtin)
        merged.update(self._per_app.get(app, {}))
        return [merged[k] for k in sorted(merged)]
