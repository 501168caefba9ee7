"""What every adapter kind shares when training: the frozen base, the data, the `Trainer` run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from llmasos.models.decoder import DecoderLM
from llmasos.train.config import TrainConfig
from llmasos.train.trainer import BatchSource, Trainer, TrainResult


def load_base(base_model: str | Path) -> tuple[DecoderLM, Path, Any]:
    """The base in fp32 (adapters are small; the base's rounding would dominate their updates), its dir, tokenizer."""
    from llmasos.kernel.llm import load_tokenizer
    from llmasos.models.loader import load_model

    model, model_dir = load_model(base_model, dtype="float32")
    return model, model_dir, load_tokenizer(model_dir)


def build_batches(data: str | Path, tokenizer: Any, cfg: TrainConfig, max_position: int,
                  reserved_positions: int = 0) -> BatchSource:
    """A chat JSONL file (loss on assistant turns) or a directory prepared by `llmasos train prepare` (plain LM).

    `reserved_positions` are taken by virtual tokens / prefixes, so the real tokens get that many fewer.
    """
    from llmasos.train.pretrain import LMBatches
    from llmasos.train.sft import ChatBatches, read_chat_jsonl, tokenize_conversation

    max_len = min(cfg.seq_len, max_position - reserved_positions)
    path = Path(data)
    if path.is_dir():
        return LMBatches(path, cfg.batch_size, max_len)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat data needs a base model whose tokenizer has a chat template")
    examples = [tokenize_conversation(tokenizer, c, max_len) for c in read_chat_jsonl(path)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return ChatBatches(examples, cfg.batch_size, pad, seed=cfg.seed)


def fit(model: nn.Module, data: BatchSource, cfg: TrainConfig, save: Callable[[], Any], title: str,
        resume: bool = False, progress: bool = True) -> TrainResult:
    """Run the shared Trainer (it trains and checkpoints only requires_grad params), then save the adapter."""
    trainer = Trainer(model, cfg, data, progress=progress, title=title)
    result = trainer.fit(resume=resume)
    if trainer.ctx.is_main and trainer.step >= cfg.max_steps:
        save()
    return result
