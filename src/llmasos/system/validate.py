"""Input checks shared by every system call: text and JSON that a database (SQLite or PostgreSQL) can store
exactly as given. Bad input is an `InvalidRequest` naming the field, never a crash or a half-written record."""

from __future__ import annotations

import json
from typing import Any

from llmasos.system.errors import InvalidRequest

MAX_TEXT = 4 << 20  # 4 MiB of text in one field
MAX_JSON_BYTES = 8 << 20
MAX_JSON_DEPTH = 64


def check_text(value: Any, field: str, *, max_len: int = MAX_TEXT, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string, got {type(value).__name__}", param=field)
    if not allow_empty and not value:
        raise InvalidRequest(f"{field} must not be empty", param=field)
    if len(value) > max_len:
        raise InvalidRequest(f"{field} is {len(value)} characters; the limit is {max_len}", param=field)
    if "\x00" in value:
        raise InvalidRequest(f"{field} contains a NUL character", param=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(f"{field} is not valid Unicode (a lone surrogate at {exc.start})", param=field) from exc
    return value


def check_name(value: Any, field: str, max_len: int = 256) -> str:
    """Keys, ids, collection and session names: non-empty, printable, bounded."""
    check_text(value, field, max_len=max_len, allow_empty=False)
    if any(ord(c) < 32 for c in value):
        raise InvalidRequest(f"{field} contains control characters", param=field)
    return value


def check_json(value: Any, field: str, *, max_bytes: int = MAX_JSON_BYTES) -> int:
    """Validate a JSON value (depth, strings, keys, finite numbers); returns its encoded size in bytes."""
    _walk(value, field, 0)
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"{field} is not JSON-serialisable: {exc}", param=field) from exc
    size = len(encoded.encode("utf-8"))
    if size > max_bytes:
        raise InvalidRequest(f"{field} is {size} bytes of JSON; the limit is {max_bytes}", param=field)
    return size


def _walk(value: Any, field: str, depth: int) -> None:
    # Iterative depth check would be nicer, but the depth bound keeps this recursion shallow by construction.
    if depth > MAX_JSON_DEPTH:
        raise InvalidRequest(f"{field} is nested more than {MAX_JSON_DEPTH} levels deep", param=field)
    if isinstance(value, str):
        check_text(value, field)
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidRequest(f"{field} has a non-string key {k!r}", param=field)
            check_text(k, field)
            _walk(v, field, depth + 1)
    elif isinstance(value, list | tuple):
        for v in value:
            _walk(v, field, depth + 1)
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidRequest(f"{field} holds a non-finite number", param=field)
    elif value is not None and not isinstance(value, bool | int):
        raise InvalidRequest(f"{field} holds a {type(value).__name__}, which is not JSON", param=field)
