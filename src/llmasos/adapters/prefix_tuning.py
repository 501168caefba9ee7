"""Prefix tuning: P trained key/value vectors per layer that every real token attends to, the base frozen.

Position semantics (the dense forward here and the kernel agree on them):
- the prefix occupies positions 0..P-1 and the real tokens start at position P;
- the prefix K/V are stored exactly as they sit in the KV cache: keys already rotated (RoPE) and normed
  (q/k norm), so nothing is applied to them at run time. They are free parameters; only the real tokens'
  queries and keys get rotated by their positions.
The kernel serves it by prepending P placeholder tokens whose computed K/V it overwrites with the prefix before
they are written to the cache, so the paged attention sees them like any cached tokens.

Training may reparameterise the prefix through an MLP (Li & Liang 2021), which trains more stably; only the
resulting K/V are saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llmasos.adapters.format import check_shape, config_fingerprint, read_adapter, save_adapter
from llmasos.models.decoder import DecoderLM
from llmasos.train.config import TrainConfig
from llmasos.train.trainer import TrainResult

WEIGHT = "prefix_kv"  # [layers, 2 (k, v), P, kv_heads, head_dim]


@dataclass
class PrefixTuningConfig:
    num_virtual_tokens: int = 10
    reparam_hidden: int = 0  # width of the reparameterising MLP; 0 trains the K/V directly

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 1:
            raise ValueError("num_virtual_tokens must be at least 1")
        if self.reparam_hidden < 0:
            raise ValueError("reparam_hidden must be >= 0")


def prefix_shape(base: DecoderLM, p: int) -> tuple[int, ...]:
    c = base.config
    return (c.num_layers, 2, p, c.num_kv_heads, c.head_dim)


def dense_forward(base: DecoderLM, input_ids: torch.Tensor, prefix_kv: torch.Tensor | None,
                  capture: list | None = None) -> torch.Tensor:
    """Causal forward of `[B, T]` ids after a `[L, 2, P, Hkv, D]` prefix -> logits `[B, T, V]`."""
    b, t = input_ids.shape
    p = 0 if prefix_kv is None else prefix_kv.shape[2]
    positions = torch.arange(p, p + t, device=input_ids.device)
    x, rope = base.embed(input_ids, positions)
    # Every query sees the whole prefix, and the real tokens causally.
    mask = torch.ones(t, p + t, dtype=torch.bool, device=x.device).tril(diagonal=p)
    for i, layer in enumerate(base.layers):
        attn = layer.attn
        q, k, v = attn._qkv(layer.input_norm(x), rope)  # [B, T, heads, D]
        if capture is not None:
            capture.append(torch.stack([k, v]))
        if prefix_kv is not None:
            pk, pv = (prefix_kv[i, j].to(k.dtype).expand(b, -1, -1, -1) for j in (0, 1))
            k, v = torch.cat([pk, k], dim=1), torch.cat([pv, v], dim=1)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                           scale=attn.scale, enable_gqa=attn.num_heads != attn.num_kv_heads)
        x = x + attn.o_proj(o.transpose(1, 2).flatten(-2))
        x = x + layer.mlp(layer.post_attn_norm(x))
    return base.lm_head(base.norm(x))


class PrefixTuningModel(nn.Module):
    def __init__(self, base: DecoderLM, cfg: PrefixTuningConfig, seed: int = 0) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.shape = prefix_shape(base, cfg.num_virtual_tokens)
        g = torch.Generator().manual_seed(seed)
        dev = base.embed_tokens.weight.device
        if cfg.reparam_hidden:
            h = base.config.hidden_size
            self.prefix_embed = nn.Parameter(torch.randn(cfg.num_virtual_tokens, h, generator=g).to(dev) * 0.02)
            out = self.shape[0] * 2 * self.shape[3] * self.shape[4]
            self.mlp = nn.Sequential(nn.Linear(h, cfg.reparam_hidden), nn.Tanh(),
                                     nn.Linear(cfg.reparam_hidden, out)).to(dev)
            self.prefix_kv = None
        else:
            # Start from the K/V the base computes for random tokens: the scale attention expects.
            ids = torch.randint(0, base.config.vocab_size, (1, cfg.num_virtual_tokens), generator=g).to(dev)
            kv: list[torch.Tensor] = []
            with torch.no_grad():
                dense_forward(base, ids, None, capture=kv)
            self.prefix_kv = nn.Parameter(torch.stack(kv)[:, :, 0].float().clone())

    def kv(self) -> torch.Tensor:
        if self.prefix_kv is not None:
            return self.prefix_kv
        layers, _, p, heads, dim = self.shape
        return self.mlp(self.prefix_embed).view(p, layers, 2, heads, dim).permute(1, 2, 0, 3, 4)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return dense_forward(self.base, input_ids, self.kv())


def save_prefix_tuning(model: PrefixTuningModel, out_dir: str | Path, base_model: str | Path | None = None) -> Path:
    config = {"adapter_type": "prefix_tuning", "num_virtual_tokens": model.shape[2],
              "base_model": str(base_model) if base_model else None,
              "base_config_sha256": config_fingerprint(model.base.config)}
    with torch.no_grad():
        return save_adapter(out_dir, config, {WEIGHT: model.kv().detach().float()})


def read_prefix_kv(path: str | Path, base: DecoderLM) -> torch.Tensor:
    config, tensors = read_adapter(path)
    if config["adapter_type"] != "prefix_tuning" or WEIGHT not in tensors:
        raise ValueError(f"{path} is not a prefix tuning adapter")
    kv = tensors[WEIGHT]
    check_shape(WEIGHT, kv, prefix_shape(base, config["num_virtual_tokens"]))
    return kv


def train_prefix_tuning(base_model: str | Path, data: str | Path, cfg: PrefixTuningConfig, train: TrainConfig,
                        resume: bool = False, progress: bool = True) -> TrainResult:
    from llmasos.adapters.train import build_batches, fit, load_base

    base, model_dir, tokenizer = load_base(base_model)
    model = PrefixTuningModel(base, cfg, seed=train.seed)
    batches = build_batches(data, tokenizer, train, base.config.max_position, cfg.num_virtual_tokens)
    model.train()
    return fit(model, batches, train, lambda: save_prefix_tuning(model, train.out_dir, model_dir), "prefix tuning",
               resume, progress)
