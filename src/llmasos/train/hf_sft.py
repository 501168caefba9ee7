"""Chat fine-tuning of any Hugging Face causal LM through `transformers.Trainer`, optionally with PEFT LoRA.

The native backend (`llmasos.train.sft`) trains our own `DecoderLM`, so it covers the families we implement.
This backend trains whatever `AutoModelForCausalLM` loads, with the same data format and the same
assistant-only loss masking (`tokenize_conversation`), and writes a directory `llmasos.LLM` serves:

    <out>/model      full fine-tune, or the LoRA weights merged into the base (`merge=True`)
    <out>/adapter    the PEFT adapter (LoRA mode): adapter_config.json + adapter_model.safetensors
    <out>/checkpoint-N, trainer_state.json ...   transformers' own checkpoints (resume with `resume=True`)
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmasos.train.config import TrainConfig
from llmasos.train.data import DataError
from llmasos.train.sft import ChatExample, tokenize_conversation

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class LoraSpec:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora rank must be a positive integer, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout}")


@dataclass
class HFSFTResult:
    out_dir: str
    steps: int
    train_loss: float | None
    val_loss: float | None
    val_ppl: float | None
    seconds: float
    precision: str
    trainable_params: int
    total_params: int
    model_dir: str | None  # a full model `llmasos.LLM` can load; None for an unmerged adapter
    adapter_dir: str | None


def to_hf_example(ex: ChatExample, pad_id: int) -> dict[str, list[int]]:
    """`tokenize_conversation` output re-aligned for transformers, whose models shift labels themselves.

    Ours has labels[t] = token t + 1; transformers wants labels[t] = token t (or -100). The last token of the
    sequence is only known when it carries a label; otherwise no loss reads it and any id (pad) will do, as
    nothing earlier attends to the final position.
    """
    last = ex.labels[-1] if ex.labels[-1] != -100 else pad_id
    return {"input_ids": [*ex.input_ids, last], "labels": [-100, *ex.labels]}


class ChatCollator:
    """Right-pads a batch: pad id in input_ids, 0 in attention_mask, -100 in labels (no loss on padding)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            mask[i, :n] = 1
            labels[i, :n] = torch.tensor(f["labels"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, list[int]]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.rows[i]


def build_datasets(tokenizer, conversations: list[list[dict[str, str]]], max_len: int,  # noqa: ANN001
                   val_fraction: float = 0.05, seed: int = 0) -> tuple[_ListDataset, _ListDataset]:
    """Tokenized, masked train/validation splits; conversations with no assistant token in `max_len` dropped."""
    if tokenizer.chat_template is None:
        raise ValueError("the tokenizer has no chat template to render conversations with")
    pad = pad_token_id(tokenizer)
    examples = [tokenize_conversation(tokenizer, c, max_len) for c in conversations]
    rows = [to_hf_example(e, pad) for e in examples if any(x != -100 for x in e.labels)]
    if len(rows) < 2:
        raise DataError("fewer than 2 conversations with an assistant turn inside seq_len")
    random.Random(seed).shuffle(rows)
    n_val = max(1, int(len(rows) * val_fraction))
    return _ListDataset(rows[n_val:]), _ListDataset(rows[:n_val])


def pad_token_id(tokenizer) -> int:  # noqa: ANN001
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token to pad batches with")
    return pad


def training_arguments(cfg: TrainConfig, use_bf16: bool, progress: bool, use_cpu: bool):  # noqa: ANN201
    """Our `TrainConfig` as `transformers.TrainingArguments` (same meaning for the shared fields)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=cfg.out_dir, max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, warmup_steps=cfg.warmup_steps,
        lr_scheduler_type="constant_with_warmup" if cfg.schedule == "constant" else "cosine",
        weight_decay=cfg.weight_decay, adam_beta1=cfg.beta1, adam_beta2=cfg.beta2,
        max_grad_norm=cfg.grad_clip if cfg.grad_clip > 0 else 1e9, bf16=use_bf16, use_cpu=use_cpu,
        logging_steps=cfg.log_interval, eval_strategy="steps", eval_steps=cfg.eval_interval,
        save_strategy="steps", save_steps=cfg.ckpt_interval, save_total_limit=2, seed=cfg.seed,
        report_to="none", disable_tqdm=not progress, remove_unused_columns=False, dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )


def _check_memory(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> None:
    from llmasos.train.memory import check_fits, training_memory

    c = model.config
    n = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    hidden = getattr(c, "hidden_size", None) or getattr(c, "n_embd", 0)
    layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", 0)
    check_fits(training_memory(n, trainable, cfg.batch_size, cfg.seq_len, hidden, layers, c.vocab_size), device,
               f"fine-tuning a {n / 1e6:.1f}M-parameter model")


def hf_sft(model_name_or_path: str | Path, conversations: list[list[dict[str, str]]], cfg: TrainConfig,
           lora: LoraSpec | None = None, merge: bool = False, resume: bool = False,
           progress: bool = True) -> HFSFTResult:
    """Fine-tune an HF causal LM on chat data with `transformers.Trainer`; see the module docstring for outputs."""
    import time

    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer

    from llmasos.train.trainer import bf16_supported

    if merge and lora is None:
        raise ValueError("merge only applies to LoRA fine-tuning (give a LoRA spec / --lora)")
    out = Path(cfg.out_dir)
    if not resume and any(out.glob("checkpoint-*")):
        raise FileExistsError(f"{out} already holds checkpoints; resume it (--resume) or choose another directory")
    tokenizer = AutoTokenizer.from_pretrained(str(model_name_or_path))
    model = AutoModelForCausalLM.from_pretrained(str(model_name_or_path), dtype=torch.float32)
    max_len = min(cfg.seq_len, getattr(model.config, "max_position_embeddings", None) or cfg.seq_len)
    train_ds, val_ds = build_datasets(tokenizer, conversations, max_len, seed=cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_supported(device))
    if lora is not None:
        model = _wrap_lora(model, lora)
    _check_memory(model, cfg, device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    trainer = Trainer(model=model, args=training_arguments(cfg, use_bf16, progress, device.type == "cpu"),
                      train_dataset=train_ds, eval_dataset=val_ds, data_collator=ChatCollator(pad_token_id(tokenizer)))
    t0 = time.perf_counter()
    # transformers prints its log dicts on stdout; our commands keep stdout for their JSON result.
    with contextlib.redirect_stdout(sys.stderr):
        train_out = trainer.train(resume_from_checkpoint=True if resume else None)
        val_loss = float(trainer.evaluate()["eval_loss"])

    model_dir = adapter_dir = None
    if trainer.is_world_process_zero():
        if lora is None:
            model_dir = _save_full(model, tokenizer, out / "model")
        else:
            adapter_dir = out / "adapter"
            model.save_pretrained(str(adapter_dir))
            tokenizer.save_pretrained(str(adapter_dir))
            if merge:
                model_dir = _save_full(model.merge_and_unload(), tokenizer, out / "model")
    result = HFSFTResult(out_dir=str(out), steps=trainer.state.global_step, train_loss=train_out.training_loss,
                         val_loss=val_loss, val_ppl=math.exp(min(val_loss, 50.0)), seconds=time.perf_counter() - t0,
                         precision="bf16" if use_bf16 else "fp32", trainable_params=trainable, total_params=total,
                         model_dir=str(model_dir) if model_dir else None,
                         adapter_dir=str(adapter_dir) if adapter_dir else None)
    (out / "result.json").write_text(json.dumps(asdict(result), indent=2))
    return result


def _wrap_lora(model: torch.nn.Module, lora: LoraSpec) -> Any:
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in lora.target_modules if t not in present]
    if missing:
        # GPT-2 style models fuse q/k/v into `c_attn`: say which names exist instead of peft's generic error.
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"})
        raise ValueError(f"LoRA target modules {missing} not in this model; its linear layers are named {linear}")
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _save_full(model: torch.nn.Module, tokenizer, out_dir: Path) -> Path:  # noqa: ANN001
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
