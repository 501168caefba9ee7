"""Reading evaluation inputs: one text per line, whole files, or JSON Lines with a `text` field."""

from __future__ import annotations

from pathlib import Path

from llmasos.train.data import DataError, read_jsonl, read_text_file

# A user input file is missing, empty or malformed; the CLI prints it as one line and exits 2. The same error
# the training data readers raise, so both kinds of input files fail the same way.
InputError = DataError


def read_lines(path: str | Path) -> list[str]:
    """One segment per line, empty lines kept: line i of a hypothesis file pairs with line i of each reference."""
    path = Path(path)
    text = read_text_file(path)
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
    if path.suffix == ".jsonl":
        texts = []
        for n, record in read_jsonl(path):
            if not isinstance(record.get("text"), str):
                raise InputError(f"{path}:{n}: expected an object with a string field \"text\"")
            texts.append(record["text"])
    else:
        text = read_text_file(path)
        if whole_file:
            texts = [text] if text.strip() else []
        else:
            texts = [line.removesuffix("\r") for line in text.split("\n") if line.strip()]
    if not texts:
        raise InputError(f"{path}: no texts to score (file is empty)")
    return texts
