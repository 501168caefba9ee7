"""Training data: reading corpora, tokenizing them into memory-mapped token files, and sampling batches.

A prepared dataset is a directory with `train.bin` and `val.bin` (flat token ids, uint16 when the vocabulary
fits, else uint32; documents separated by the tokenizer's eos) and `meta.json`. Memory-mapping keeps corpora
larger than RAM usable, and the split is by document so no text is in both halves.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

TEXT_SUFFIXES = {".txt", ".md", ".text"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}


class DataError(ValueError):
    """Malformed or empty training data, with the file and line it was found at."""


def read_text_file(path: Path) -> str:
    """A whole UTF-8 file, or a DataError saying why not (missing, or where the bad bytes are)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line, streamed; a malformed line is a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with path.open("rb") as f:  # decoded line by line, so a bad byte is reported at its own line
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not UTF-8 text ({exc.reason})") from exc
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_texts(path: str | Path, text_field: str = "text") -> Iterator[str]:
    """Documents of a file: blank-line separated paragraphs of a text file, or `text_field` of each JSONL line."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix in TEXT_SUFFIXES | JSONL_SUFFIXES)
        if not files:
            raise DataError(f"{p}: no .txt/.md/.jsonl files in this directory")
        for f in files:
            yield from read_texts(f, text_field)
        return
    if p.suffix in JSONL_SUFFIXES:
        for lineno, obj in read_jsonl(p):
            text = obj.get(text_field)
            if not isinstance(text, str):
                raise DataError(f"{p}:{lineno}: missing string field {text_field!r}")
            if text.strip():
                yield text
        return
    for para in read_text_file(p).split("\n\n"):
        if para.strip():
            yield para.strip()


def read_hub_dataset(name: str, config: str | None = None, split: str = "train", text_field: str = "text",
                     limit: int | None = None) -> Iterator[str]:
    """Texts of a Hugging Face `datasets` hub dataset (e.g. "wikimedia/wikipedia", "20231101.en"), streamed."""
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as exc:  # offline, unknown name, gated: one clear message
        raise DataError(f"could not load hub dataset {name!r} ({config}): {exc}") from exc
    for i, row in enumerate(ds):
        if limit is not None and i >= limit:
            return
        text = row.get(text_field)
        if isinstance(text, str) and text.strip():
            yield text


@dataclass
class DatasetMeta:
    vocab_size: int
    eos_token_id: int
    dtype: str
    train_tokens: int
    val_tokens: int
    train_docs: int
    val_docs: int
    tokenizer: str


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def prepare_dataset(texts: Iterable[str], tokenizer, out_dir: str | Path, val_fraction: float = 0.05,  # noqa: ANN001
                    seed: int = 0, tokenizer_path: str = "", progress: bool = False) -> DatasetMeta:
    """Tokenize documents into `train.bin` / `val.bin` (eos after each document) under `out_dir`."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1)")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token to separate documents")
    vocab = len(tokenizer)
    dt = token_dtype(vocab)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    counts = {"train": [0, 0], "val": [0, 0]}  # tokens, docs
    files = {s: (out / f"{s}.bin.tmp").open("wb") for s in counts}
    try:
        docs = _progress(texts, "tokenizing") if progress else texts
        batch: list[str] = []
        for text in docs:
            batch.append(text)
            if len(batch) == 256:
                _write_batch(batch, tokenizer, eos, dt, rng, val_fraction, files, counts)
                batch = []
        _write_batch(batch, tokenizer, eos, dt, rng, val_fraction, files, counts)
    finally:
        for f in files.values():
            f.close()
    if counts["train"][1] + counts["val"][1] == 0:
        for s in counts:
            (out / f"{s}.bin.tmp").unlink()
        raise DataError("the corpus is empty: no non-blank documents found")
    if val_fraction > 0 and counts["val"][1] == 0:
        # Tiny corpora: move nothing around, but make sure validation has something to measure.
        (out / "val.bin.tmp").write_bytes((out / "train.bin.tmp").read_bytes())
        counts["val"] = list(counts["train"])
    for s in counts:
        (out / f"{s}.bin.tmp").replace(out / f"{s}.bin")
    meta = DatasetMeta(vocab_size=vocab, eos_token_id=eos, dtype=dt.name, train_tokens=counts["train"][0],
                       val_tokens=counts["val"][0], train_docs=counts["train"][1], val_docs=counts["val"][1],
                       tokenizer=tokenizer_path)
    (out / "meta.json").write_text(json.dumps(asdict(meta), indent=2))
    return meta


def _write_batch(batch, tokenizer, eos, dt, rng, val_fraction, files, counts) -> None:  # noqa: ANN001
    if not batch:
        return
    for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
        split = "val" if rng.random() < val_fraction else "train"
        arr = np.asarray([*ids, eos], dtype=dt)
        files[split].write(arr.tobytes())
        counts[split][0] += len(arr)
        counts[split][1] += 1


def _progress(it: Iterable[str], what: str) -> Iterator[str]:
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    # stderr: stdout stays clean for the commands' JSON output.
    with Progress(SpinnerColumn(), TextColumn("{task.description} {task.completed} docs"), TimeElapsedColumn(),
                  console=Console(stderr=True)) as p:
        task = p.add_task(what)
        for x in it:
            yield x
            p.advance(task)


class TokenDataset:
    """A prepared directory's token stream, sampled as random `seq_len + 1` windows (nanoGPT style)."""

    def __init__(self, data_dir: str | Path, split: str = "train") -> None:
        d = Path(data_dir)
        meta_path = d / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{d}: not a prepared dataset (no meta.json); run `llmasos train prepare` first")
        self.meta = DatasetMeta(**json.loads(meta_path.read_text()))
        path = d / f"{split}.bin"
        if not path.is_file() or path.stat().st_size == 0:
            raise DataError(f"{path}: missing or empty")
        self.tokens = np.memmap(path, dtype=np.dtype(self.meta.dtype), mode="r")

    def __len__(self) -> int:
        return len(self.tokens)

    def check_seq_len(self, seq_len: int) -> None:
        if len(self.tokens) < seq_len + 1:
            raise DataError(f"only {len(self.tokens)} tokens, fewer than one sequence of {seq_len + 1}: "
                            "use a shorter seq_len or more data")

    def sample(self, batch_size: int, seq_len: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        starts = torch.randint(0, len(self.tokens) - seq_len, (batch_size,), generator=generator).tolist()
        return self._windows(starts, seq_len)

    def sequential(self, batch_size: int, seq_len: int, max_batches: int | None = None) -> Iterator[dict]:
        """Non-overlapping windows from the start: a fixed validation set, the same at every evaluation."""
        starts = list(range(0, len(self.tokens) - seq_len, seq_len))
        if max_batches is not None:
            starts = starts[: max_batches * batch_size]
        for i in range(0, len(starts), batch_size):
            yield self._windows(starts[i : i + batch_size], seq_len)

    def _windows(self, starts: Sequence[int], seq_len: int) -> dict[str, torch.Tensor]:
        w = torch.from_numpy(np.stack([self.tokens[s : s + seq_len + 1].astype(np.int64) for s in starts]))
        return {"input_ids": w[:, :-1], "labels": w[:, 1:]}
