"""Pre-training a native decoder from a config file: model spec + prepared data + hyper-parameters.

```yaml
model:                      # HF-style keys for the family's config (or `init_from: <HF dir or hub name>`)
  family: llama
  hidden_size: 256
  intermediate_size: 704
  num_hidden_layers: 6
  num_attention_heads: 8
  num_key_value_heads: 4
  max_position_embeddings: 1024
  tie_word_embeddings: true
data: runs/data             # a directory written by `llmasos train prepare`
train:                      # TrainConfig fields
  out_dir: runs/pretrain
  max_steps: 2000
  seq_len: 256
```
The finished model is exported as a Hugging Face directory in `<out_dir>/model`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from llmasos.models.config import ModelConfig
from llmasos.models.decoder import DecoderLM
from llmasos.models.hf_format import make_hf_config, save_hf_checkpoint
from llmasos.train.config import TrainConfig, load_config_file
from llmasos.train.data import TokenDataset
from llmasos.train.distributed import init_distributed
from llmasos.train.memory import check_fits, training_memory
from llmasos.train.trainer import Trainer, TrainResult


class PretrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: dict[str, Any]
    data: str
    tokenizer: str | None = None
    train: TrainConfig

    @classmethod
    def from_file(cls, path: str | Path) -> PretrainSpec:
        return cls.model_validate(load_config_file(path))


class LMBatches:
    """Random windows for training, a fixed sequence of windows for validation."""

    def __init__(self, data_dir: str | Path, batch_size: int, seq_len: int) -> None:
        self.train, self.val = TokenDataset(data_dir, "train"), TokenDataset(data_dir, "val")
        self.train.check_seq_len(seq_len)
        self.val_seq_len = min(seq_len, len(self.val) - 1)
        if self.val_seq_len < 1:
            raise ValueError(f"{data_dir}: the validation split holds fewer than 2 tokens")
        self.batch_size, self.seq_len = batch_size, seq_len

    def sample(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.train.sample(self.batch_size, self.seq_len, generator)

    def val_batches(self):  # noqa: ANN201
        return self.val.sequential(self.batch_size, self.val_seq_len)


def init_weights(model: DecoderLM, std: float = 0.02) -> None:
    """GPT-2 style init: N(0, std) everywhere, residual output projections scaled by 1/sqrt(2 * layers)."""
    resid_std = std / math.sqrt(2 * model.config.num_layers)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, resid_std if name.endswith(("o_proj", "down_proj")) else std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)


def build_model_from_spec(spec: dict[str, Any], vocab_size: int, eos_token_id: int, pad_token_id: int = 0,
                          seed: int = 0) -> tuple[DecoderLM, dict[str, Any]]:
    """A freshly initialised fp32 `DecoderLM` and the HF config dict it will be exported with."""
    spec = dict(spec)
    if "init_from" in spec:
        from llmasos.models.loader import load_model, read_hf_config

        model, model_dir = load_model(spec.pop("init_from"), dtype="float32")
        return model.train(), read_hf_config(model_dir)
    family = spec.pop("family", "llama")
    hf_config = make_hf_config(family, spec.pop("vocab_size", vocab_size), eos_token_id=eos_token_id,
                               pad_token_id=pad_token_id, **spec)
    torch.manual_seed(seed)
    model = DecoderLM(ModelConfig.from_hf(hf_config))
    init_weights(model)
    return model.train(), hf_config


def pretrain(spec: PretrainSpec, resume: bool = False, progress: bool = True,
             stop_at_step: int | None = None) -> TrainResult:
    from transformers import AutoTokenizer

    cfg = spec.train
    data = LMBatches(spec.data, cfg.batch_size, cfg.seq_len)
    meta = data.train.meta
    tok_dir = spec.tokenizer or meta.tokenizer
    tokenizer = AutoTokenizer.from_pretrained(tok_dir) if tok_dir else None
    ctx = init_distributed()
    if "init_from" not in spec.model:
        m = ModelConfig.from_hf(make_hf_config(spec.model.get("family", "llama"), meta.vocab_size,
                                               **{k: v for k, v in spec.model.items() if k != "family"}))
        n = m.num_params
        check_fits(training_memory(n, n, cfg.batch_size, cfg.seq_len, m.hidden_size, m.num_layers, m.vocab_size),
                   ctx.device, f"pre-training a {n / 1e6:.1f}M-parameter model")
    model, hf_config = build_model_from_spec(spec.model, meta.vocab_size, meta.eos_token_id, seed=cfg.seed)
    if model.config.vocab_size < meta.vocab_size:
        raise ValueError(f"model vocab_size {model.config.vocab_size} is smaller than the data's {meta.vocab_size}")
    trainer = Trainer(model, cfg, data, extra_state={"hf_config": hf_config}, progress=progress,
                      title="pre-training", dist_ctx=ctx)
    result = trainer.fit(resume=resume, stop_at_step=stop_at_step)
    if ctx.is_main and trainer.step >= cfg.max_steps:
        save_hf_checkpoint(model, hf_config, Path(cfg.out_dir) / "model", tokenizer=tokenizer)
    return result
