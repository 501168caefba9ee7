"""Shared by distillation and pruning: loading a model with its HF config, calibration / evaluation token
windows from a prepared dataset, size and sparsity figures, and the short Trainer runs both use."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmasos.models.decoder import DecoderLM
from llmasos.train.data import TokenDataset

# Linear layers of every block, by their name under `layers.{i}.`.
BLOCK_LINEARS = ("attn.qkv_proj", "attn.o_proj", "mlp.up_proj", "mlp.down_proj")


def load_fp32(name_or_path: str | Path) -> tuple[DecoderLM, dict[str, Any], Path]:
    """`(model, hf_config, model_dir)` in fp32: pruning scores and distillation gradients want full precision."""
    from llmasos.models.loader import load_model, read_hf_config

    model, model_dir = load_model(name_or_path, dtype="float32")
    hf = read_hf_config(model_dir)
    if hf.get("quantization_config"):
        raise ValueError(f"{model_dir} is quantized: prune or distill the full-precision model, then quantize")
    return model, hf, model_dir


def load_tokenizer(model_dir: Path) -> Any:
    """The model directory's tokenizer, or None when it ships without one."""
    if not (model_dir / "tokenizer_config.json").is_file() and not (model_dir / "tokenizer.json").is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def token_windows(data_dir: str | Path, split: str, seq_len: int, max_windows: int) -> list[list[int]]:
    """Up to `max_windows` consecutive, non-overlapping windows of `seq_len` tokens from a prepared split."""
    ds = TokenDataset(data_dir, split)
    seq_len = max(2, min(seq_len, len(ds)))
    n = min(max_windows, len(ds) // seq_len)
    return [ds.tokens[i * seq_len : (i + 1) * seq_len].astype("int64").tolist() for i in range(max(n, 1))]


def calibration_batches(data_dir: str | Path, num_samples: int, seq_len: int, batch_size: int = 8,
                        ) -> list[torch.Tensor]:
    """Calibration inputs `[B, T]` from the train split (the same windows every time: scores are reproducible)."""
    wins = token_windows(data_dir, "train", seq_len, num_samples)
    width = min(len(w) for w in wins)
    ids = torch.tensor([w[:width] for w in wins], dtype=torch.long)
    return list(ids.split(batch_size))


def eval_ppl(model: nn.Module, texts: list[list[int]]) -> float:
    from llmasos.eval.perplexity import perplexity

    max_len = min(model.config.max_position, max(len(t) for t in texts))
    was_training = model.training
    model.eval()
    try:
        return perplexity(model, texts, max_length=max_len, stride=max_len).corpus_ppl
    finally:
        model.train(was_training)


def count_params(model: nn.Module) -> int:
    """Parameters, shared (tied) tensors counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def count_nonzero(model: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in {id(p): p for p in model.parameters()}.values())


def block_linears(model: DecoderLM) -> dict[str, nn.Linear]:
    """`layers.{i}.attn.qkv_proj` ... -> module, for every block."""
    return {f"layers.{i}.{n}": layer.get_submodule(n) for i, layer in enumerate(model.layers) for n in BLOCK_LINEARS}


def block_sparsity(model: DecoderLM) -> float:
    """Fraction of zeros over the block linear weights (what pruning touches; embeddings and head excluded)."""
    ws = [m.weight for m in block_linears(model).values()]
    return 1.0 - sum(int((w != 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def disk_bytes(model_dir: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))


@dataclass
class RunSettings:
    """The few training knobs the compress commands expose; everything else is a TrainConfig default."""

    steps: int = 200
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 3e-4
    warmup_steps: int = 10
    precision: str = "auto"
    num_threads: int | None = None
    seed: int = 0

    def train_config(self, out_dir: str | Path) -> Any:
        from llmasos.train.config import TrainConfig

        every = max(1, self.steps)
        return TrainConfig(out_dir=str(out_dir), max_steps=self.steps, batch_size=self.batch_size,
                           seq_len=self.seq_len, lr=self.lr, warmup_steps=min(self.warmup_steps, self.steps - 1),
                           precision=self.precision, eval_interval=every, ckpt_interval=every,
                           log_interval=max(1, min(10, self.steps)), eval_batches=4,
                           num_threads=self.num_threads, seed=self.seed)


def clamp_seq_len(settings: RunSettings, max_position: int, data_dir: str | Path) -> RunSettings:
    """Windows no longer than the model's context or the training split allows."""
    s = copy.copy(settings)
    s.seq_len = max(2, min(s.seq_len, max_position, len(TokenDataset(data_dir, "train")) - 1))
    return s


def check_fraction(name: str, value: float, allow_one: bool) -> None:
    ok = (0.0 <= value <= 1.0) if allow_one else (0.0 <= value < 1.0)
    if not ok or math.isnan(value):
        raise ValueError(f"{name} must be in [0, 1{']' if allow_one else ')'}, got {value}")


def source_dtype(hf: dict[str, Any]) -> torch.dtype:
    """The dtype the source checkpoint was stored in: outputs are saved the same way (no fp32 blow-up on disk)."""
    name = hf.get("torch_dtype") or hf.get("dtype") or "float32"
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(str(name).removeprefix("torch."), torch.float32)


def decode_tok_s(model_dir: str | Path, new_tokens: int = 64, prompt_len: int = 16, repeats: int = 3,
                 dtype: str = "auto", num_threads: int | None = None) -> float:
    """Batch-1 greedy decode speed through `llmasos.LLM` (median of `repeats`, after one warm-up run)."""
    import statistics
    import time

    from llmasos import LLM, SamplingParams

    llm = LLM(str(model_dir), dtype=dtype, num_threads=num_threads, kv_cache_memory=64 << 20)
    prompt = [3 + (i * 7) % 50 for i in range(prompt_len)]
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    llm.generate([prompt], params)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        llm.generate([prompt], params)
        times.append(time.perf_counter() - t0)
    return new_tokens / statistics.median(times)


def resolve_dir(name_or_path: str | Path) -> Path:
    from llmasos.models.loader import resolve_model_dir

    return resolve_model_dir(name_or_path)
