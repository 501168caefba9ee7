"""The evaluation corpus, built at run time from this interpreter's standard library: one document per object
named in data/stdlib_objects.txt, its text as `pydoc` shows it (the name and signature, then the
docstring)."""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"


def resolve(name: str) -> Any:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ImportError:
            continue
    else:
        raise ImportError(name)
    for p in parts[i:]:
        obj = getattr(obj, p)
    return obj


def object_names() -> list[str]:
    lines = (DATA / "stdlib_objects.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def stdlib_documents(names: list[str] | None = None) -> list[dict]:
    """[{"id": "bisect.insort", "text": "bisect.insort(a, x, lo=0, hi=None, *, key=None)\\n\\nInsert item
    ...",
    "metadata": {...}}]"""
    docs = []
    for name in names or object_names():
        obj = resolve(name)
        try:
            sig = str(inspect.signature(obj))
        except (TypeError, ValueError):
            sig = ""
        doc = inspect.getdoc(obj) or ""
        docs.append(
            {
                "id": name,
                "text": f"{name}{sig}\n\n{doc}".strip(),
                "metadata": {
                    "module": getattr(obj, "__module__", "") or name.rsplit(".", 1)[0],
                    "python": sys.version.split()[0],
                },
            }
        )
    return docs


def load_questions(file: str) -> list[dict]:
    return [json.loads(ln) for ln in (DATA / file).read_text().splitlines() if ln.strip()]
