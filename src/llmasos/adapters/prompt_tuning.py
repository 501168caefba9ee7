"""Prompt tuning: N trained "virtual token" embeddings prepended to the input, the base frozen.

Positions: the virtual tokens take positions 0..N-1 and the real tokens start at N, exactly as if N tokens had
been prepended to the prompt (learned position embeddings are added to the virtual tokens too). The kernel
serves it that way: it prepends N placeholder tokens and swaps their embeddings for the adapter's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from llmasos.adapters.format import check_shape, config_fingerprint, read_adapter, save_adapter
from llmasos.models.decoder import DecoderLM
from llmasos.train.config import TrainConfig
from llmasos.train.trainer import TrainResult

WEIGHT = "prompt_embeddings"


@dataclass
class PromptTuningConfig:
    num_virtual_tokens: int = 20

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 1:
            raise ValueError("num_virtual_tokens must be at least 1")


class PromptTuningModel(nn.Module):
    """`model(input_ids[B, T])` -> logits `[B, T, V]` of the real tokens, with the virtual tokens in front."""

    def __init__(self, base: DecoderLM, cfg: PromptTuningConfig, seed: int = 0) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        # Start from embeddings of random vocabulary tokens: the right scale, unlike a fresh random init.
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, base.config.vocab_size, (cfg.num_virtual_tokens,), generator=g)
        self.prompt = nn.Parameter(base.embed_tokens.weight.detach()[ids.to(base.embed_tokens.weight.device)].clone())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        b, n = input_ids.shape[0], self.prompt.shape[0]
        base = self.base
        positions = torch.arange(n + input_ids.shape[1], device=input_ids.device)
        x = torch.cat([self.prompt.to(base.embed_tokens.weight.dtype).expand(b, -1, -1),
                       base.embed_tokens(input_ids)], dim=1)
        if base.embed_positions is not None:
            x = x + base.embed_positions(positions)
        rope = base.rope.lookup(positions, x.dtype) if base.rope is not None else None
        for layer in base.layers:
            x = layer(x, rope)
        return base.lm_head(base.norm(x[:, n:]))


def save_prompt_tuning(model: PromptTuningModel, out_dir: str | Path, base_model: str | Path | None = None) -> Path:
    config = {"adapter_type": "prompt_tuning", "num_virtual_tokens": model.prompt.shape[0],
              "base_model": str(base_model) if base_model else None,
              "base_config_sha256": config_fingerprint(model.base.config)}
    return save_adapter(out_dir, config, {WEIGHT: model.prompt.detach()})


def read_prompt_embeddings(path: str | Path, base: DecoderLM) -> torch.Tensor:
    """The `[N, hidden]` virtual token embeddings, checked against `base`."""
    config, tensors = read_adapter(path)
    if config["adapter_type"] != "prompt_tuning" or WEIGHT not in tensors:
        raise ValueError(f"{path} is not a prompt tuning adapter")
    emb = tensors[WEIGHT]
    check_shape(WEIGHT, emb, (config["num_virtual_tokens"], base.config.hidden_size))
    return emb


def train_prompt_tuning(base_model: str | Path, data: str | Path, cfg: PromptTuningConfig, train: TrainConfig,
                        resume: bool = False, progress: bool = True) -> TrainResult:
    from llmasos.adapters.train import build_batches, fit, load_base

    base, model_dir, tokenizer = load_base(base_model)
    model = PromptTuningModel(base, cfg, seed=train.seed)
    batches = build_batches(data, tokenizer, train, base.config.max_position, cfg.num_virtual_tokens)
    model.train()
    return fit(model, batches, train, lambda: save_prompt_tuning(model, train.out_dir, model_dir), "prompt tuning",
               resume, progress)
