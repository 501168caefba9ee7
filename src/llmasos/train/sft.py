"""Supervised fine-tuning on chat data: the loss falls only on what the assistant says.

Data is JSONL, one conversation per line: `{"messages": [{"role": "user", "content": "..."}, ...]}` with roles
system / user / assistant. Each conversation is rendered with the tokenizer's own chat template; tokens of
assistant turns (their closing end-of-turn token included, so the model learns to stop) carry the loss.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from llmasos.train.config import TrainConfig
from llmasos.train.data import DataError, read_jsonl
from llmasos.train.trainer import Trainer, TrainResult

ROLES = {"system", "user", "assistant"}


def validate_messages(messages: object, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {i} needs a role in {sorted(ROLES)} and a string content")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant message, nothing to learn from")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_chat_jsonl(path: str | Path) -> list[list[dict[str, str]]]:
    p = Path(path)
    convs = [validate_messages(obj.get("messages"), f"{p}:{n}") for n, obj in read_jsonl(p)]
    if not convs:
        raise DataError(f"{p}: no conversations")
    return convs


@dataclass
class ChatExample:
    input_ids: list[int]
    labels: list[int]  # -100 where no loss


def tokenize_conversation(tokenizer, messages: Sequence[dict[str, str]], max_len: int) -> ChatExample:  # noqa: ANN001
    """Token ids of the rendered conversation and labels that keep only assistant spans."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(tokenizer.apply_chat_template(list(messages[:i]), tokenize=False, add_generation_prompt=True))
        end = len(tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=False))
        if text[:end] != tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=False):
            raise ValueError("the chat template does not render conversations prefix by prefix; "
                             "assistant spans cannot be located")
        spans.append((start, end))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"][: max_len + 1]
    labels = [-100] * len(ids)
    for j, (a, b) in enumerate(enc["offset_mapping"][: len(ids)]):
        if any(s <= a and b <= e and a < b for s, e in spans):
            labels[j] = ids[j]
    # Shift: position t predicts token t + 1.
    return ChatExample(input_ids=ids[:-1], labels=labels[1:])


class ChatBatches:
    """Random conversations padded to the longest in the batch; a fixed slice of them for validation."""

    def __init__(self, examples: list[ChatExample], batch_size: int, pad_id: int, val_fraction: float = 0.05,
                 seed: int = 0) -> None:
        examples = [e for e in examples if any(x != -100 for x in e.labels)]
        if len(examples) < 2:
            raise DataError("fewer than 2 conversations with an assistant turn inside seq_len")
        order = list(range(len(examples)))
        random.Random(seed).shuffle(order)
        n_val = max(1, int(len(examples) * val_fraction))
        self.val = [examples[i] for i in order[:n_val]]
        self.train = [examples[i] for i in order[n_val:]]
        self.batch_size, self.pad_id = batch_size, pad_id

    def _collate(self, batch: Sequence[ChatExample]) -> dict[str, torch.Tensor]:
        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for i, e in enumerate(batch):  # right padding: causal attention never lets real tokens see it
            ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
            labels[i, : len(e.labels)] = torch.tensor(e.labels)
        return {"input_ids": ids, "labels": labels}

    def sample(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, len(self.train), (self.batch_size,), generator=generator).tolist()
        return self._collate([self.train[i] for i in idx])

    def val_batches(self) -> Iterable[dict[str, torch.Tensor]]:
        for i in range(0, len(self.val), self.batch_size):
            yield self._collate(self.val[i : i + self.batch_size])


def sft(model_name_or_path: str | Path, conversations: list[list[dict[str, str]]], cfg: TrainConfig,
        resume: bool = False, progress: bool = True) -> TrainResult:
    """Fine-tune a native model on conversations; the result is exported to `<out_dir>/model`."""
    from transformers import AutoTokenizer

    from llmasos.models.hf_format import save_hf_checkpoint
    from llmasos.models.loader import load_model, read_hf_config

    model, model_dir = load_model(model_name_or_path, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.chat_template is None:
        raise ValueError(f"{model_dir}: the tokenizer has no chat template to render conversations with")
    max_len = min(cfg.seq_len, model.config.max_position)  # longer conversations are truncated, not an error
    examples = [tokenize_conversation(tokenizer, c, max_len) for c in conversations]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    data = ChatBatches(examples, cfg.batch_size, pad, seed=cfg.seed)
    model.train()
    trainer = Trainer(model, cfg, data, progress=progress, title="chat fine-tuning")
    result = trainer.fit(resume=resume)
    if trainer.ctx.is_main and trainer.step >= cfg.max_steps:
        save_hf_checkpoint(model, read_hf_config(model_dir), Path(cfg.out_dir) / "model", tokenizer=tokenizer)
    return result
