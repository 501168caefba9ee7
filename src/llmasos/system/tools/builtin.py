"""The built-in tools: memory search / write, knowledge search, calculator, current time, file read / write /
list in the caller's own file area. Each acts only in the calling app's scope."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from llmasos.system.errors import InvalidRequest
from llmasos.system.tools.calculator import evaluate
from llmasos.system.tools.registry import Tool, ToolContext


def _memory_search(ctx: ToolContext, a: dict) -> list[dict]:
    svc = ctx.services
    k = a.get("k", 5)
    hits = svc.archival.search(ctx.app, a["query"], k, user=ctx.user or None)
    hits += svc.recall.search(ctx.app, a["query"], k, session=ctx.session) if ctx.session else []
    hits.sort(key=lambda h: -h.score)
    return [{"text": h.text, "score": round(h.score, 4), "source": h.source, "metadata": h.meta} for h in hits[:k]]


def _memory_write(ctx: ToolContext, a: dict) -> dict:
    item = ctx.services.archival.insert(ctx.app, a["text"], a.get("metadata") or {}, user=ctx.user)
    return {"id": item, "stored": True}


def _knowledge_search(ctx: ToolContext, a: dict) -> list[dict]:
    filters = {"collection": a["collection"]} if a.get("collection") else {"kind": "knowledge"}
    hits = ctx.services.archival.search(ctx.app, a["query"], a.get("k", 5), filters=filters)
    return [{"text": h.text, "score": round(h.score, 4), "metadata": h.meta} for h in hits]


def _calculator(_ctx: ToolContext, a: dict) -> dict:
    return {"expression": a["expression"], "result": evaluate(a["expression"])}


def _current_time(_ctx: ToolContext, a: dict) -> dict:
    name = a.get("timezone") or "UTC"
    try:
        tz = UTC if name == "UTC" else ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidRequest(f"unknown time zone {name!r}") from exc
    now = datetime.now(tz)
    return {"timezone": name, "iso": now.isoformat(timespec="seconds"), "weekday": now.strftime("%A")}


def _file_read(ctx: ToolContext, a: dict) -> str:
    return ctx.services.files(ctx.app).read_text(a["path"])


def _file_write(ctx: ToolContext, a: dict) -> dict:
    n = ctx.services.write_file(ctx.app, a["path"], a["content"])
    return {"path": a["path"], "bytes": n}


def _file_list(ctx: ToolContext, a: dict) -> list[dict]:
    return ctx.services.files(ctx.app).list(a.get("prefix", ""))


def _obj(props: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


QUERY = {"type": "string", "minLength": 1, "maxLength": 2000}
K = {"type": "integer", "minimum": 1, "maximum": 20}
PATH = {"type": "string", "minLength": 1, "maxLength": 1024}


def builtin_tools() -> list[Tool]:
    return [
        Tool("memory_search", "Search this app's long-term memory and this conversation's earlier turns.",
             _obj({"query": QUERY, "k": K}, ["query"]), _memory_search, requires=("memory.read",)),
        Tool("memory_write", "Store a fact in this app's long-term memory.",
             _obj({"text": {"type": "string", "minLength": 1, "maxLength": 8000}, "metadata": {"type": "object"}},
                  ["text"]), _memory_write, side_effects=True, requires=("memory.write",)),
        Tool("knowledge_search", "Search this app's knowledge documents.",
             _obj({"query": QUERY, "k": K, "collection": {"type": "string", "maxLength": 128}}, ["query"]),
             _knowledge_search, requires=("memory.read",)),
        Tool("calculator", "Evaluate an arithmetic expression (+ - * / // % **, sqrt, log, sin, round, ...).",
             _obj({"expression": {"type": "string", "minLength": 1, "maxLength": 500}}, ["expression"]),
             _calculator, untrusted_output=False),
        Tool("current_time", "The current date and time, in UTC or a named time zone (e.g. Asia/Shanghai).",
             _obj({"timezone": {"type": "string", "maxLength": 64}}, []), _current_time, untrusted_output=False),
        Tool("file_read", "Read a text file from this app's file area.", _obj({"path": PATH}, ["path"]),
             _file_read, requires=("storage",)),
        Tool("file_write", "Write a text file in this app's file area.",
             _obj({"path": PATH, "content": {"type": "string", "maxLength": 1 << 20}}, ["path", "content"]),
             _file_write, side_effects=True, requires=("storage",)),
        Tool("file_list", "List files in this app's file area.",
             _obj({"prefix": {"type": "string", "maxLength": 1024}}, []), _file_list, requires=("storage",)),
    ]
