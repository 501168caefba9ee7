"""Reading evaluation inputs: one text per line, whole files, or JSON Lines with a `text` field."""

from __future__ import annotations

import json
from pathlib import Path


class InputError(ValueError):
    """A user input file is missing, empty or malformed; the CLI prints it as one line and exits 2."""


def _read(path: Path) -> str:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def read_lines(path: str | Path) -> list[str]:
    """One segment per line, empty lines kept: line i of a hypothesis file pairs with line i of each reference."""
    path = Path(path)
    text = _read(path)
    if not text.strip():
        raise InputError(f"{path}: file is empty")
    # Split on "\n" only (like sacrebleu's own reader): str.splitlines would also split on \x0b, \u2028, ...
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_texts(path: str | Path, whole_file: bool = False) -> list[str]:
    """Texts to score: a .jsonl file's `text` fields, the whole file, or each non-empty line."""
    path = Path(path)
    text = _read(path)
    if path.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{n}: invalid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise InputError(f"{path}:{n}: expected an object with a string field \"text\"")
            texts.append(record["text"])
    elif whole_file:
        texts = [text] if text.strip() else []
    else:
        texts = [line.removesuffix("\r") for line in text.split("\n") if line.strip()]
    if not texts:
        raise InputError(f"{path}: no texts to score (file is empty)")
    return texts
