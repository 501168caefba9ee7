"""Decoder-only Transformer covering Llama/Mistral, Qwen2, Qwen3 and GPT-2, read top to bottom like nanoGPT.

Two calling modes share one set of weights:
- dense: `model(input_ids[B, T])` -> logits `[B, T, V]`, causal attention, no cache (training, parity tests);
- paged: `model.forward_paged(ids[T], positions[T], meta, kv_caches)` -> hidden `[T, H]` (the engine).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from llmasos.models.attention import AttentionMetadata, paged_attention, write_kv
from llmasos.models.config import ModelConfig
from llmasos.models.fast_decode import FastDecode
from llmasos.models.fast_decode import build as build_fast_decode
from llmasos.models.layers import MLP, RMSNorm, RotaryEmbedding, add_and_norm, apply_rope, make_norm
from llmasos.ops import Linear

RopeTables = tuple[torch.Tensor, torch.Tensor] | None  # (cos, sin) looked up for this forward's positions
KVHook = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Attention(nn.Module):
    kv_hook: KVHook | None = None  # set by the kernel's adapter manager (prefix tuning) to edit a step's K/V

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim
        self.scale = cfg.head_dim**-0.5
        # q, k and v in one matmul: one pass over the activations instead of three.
        self.qkv_proj = Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.qkv_bias)
        self.o_proj = Linear(self.q_size, cfg.hidden_size, bias=cfg.o_bias)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def _qkv(self, x: torch.Tensor, rope: RopeTables) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        qkv = self.qkv_proj(x)
        if self.q_norm is not None:
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = self.q_norm(q.unflatten(-1, (self.num_heads, self.head_dim)))
            k = self.k_norm(k.unflatten(-1, (self.num_kv_heads, self.head_dim)))
            qk = torch.cat([q, k], dim=-2)
        else:
            qk = qkv[..., : self.q_size + self.kv_size].unflatten(-1, (self.num_heads + self.num_kv_heads, self.head_dim))
        if rope is not None:
            qk = apply_rope(qk, rope)  # q and k heads rotated together: half the ops
        q, k = qk.split([self.num_heads, self.num_kv_heads], dim=-2)
        v = qkv[..., self.q_size + self.kv_size :].unflatten(-1, (self.num_kv_heads, self.head_dim))
        return q, k, v

    def forward(self, x: torch.Tensor, rope: RopeTables) -> torch.Tensor:
        q, k, v = (t.transpose(1, 2) for t in self._qkv(x, rope))  # [B, heads, T, D]
        o = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=self.scale, enable_gqa=self.num_heads != self.num_kv_heads
        )
        return self.o_proj(o.transpose(1, 2).flatten(-2))

    def forward_paged(
        self, x: torch.Tensor, rope: RopeTables, meta: AttentionMetadata, kv: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        q, k, v = self._qkv(x, rope)  # [T, heads, D]
        if self.kv_hook is not None:
            k, v = self.kv_hook(k, v)
        write_kv(kv[0], kv[1], k, v, meta.slot_mapping)
        o = paged_attention(q, k, v, kv[0], kv[1], meta, self.scale)
        return self.o_proj(o.flatten(-2))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.post_attn_norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.gated_mlp, cfg.activation, cfg.mlp_bias)

    def forward(self, x: torch.Tensor, rope: RopeTables) -> torch.Tensor:
        x = x + self.attn(self.input_norm(x), rope)
        return x + self.mlp(self.post_attn_norm(x))

    def forward_paged(self, x, rope, meta, kv) -> torch.Tensor:  # noqa: ANN001 - same as forward
        x, h = add_and_norm(self.post_attn_norm, x, self.attn.forward_paged(self.input_norm(x), rope, meta, kv))
        return x + self.mlp(h)


_UNBUILT = object()


class DecoderLM(nn.Module):
    # Set by the kernel's adapter manager (prompt tuning) to replace some rows' input embeddings in a step.
    embed_hook: Callable[[torch.Tensor], torch.Tensor] | None = None
    _fast_decode: FastDecode | None | object = _UNBUILT  # fast_decode's plan for these modules, built on first use

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.embed_positions = nn.Embedding(cfg.max_position, cfg.hidden_size) if cfg.learned_positions else None
        self.rope = None if cfg.learned_positions else RotaryEmbedding(
            cfg.head_dim, cfg.max_position, cfg.rope_theta, cfg.rope_scaling
        )
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, RopeTables]:
        """Token (+ learned position) embeddings, and the rotary tables every layer will use."""
        x = self.embed_tokens(input_ids)
        if self.embed_positions is not None:
            x = x + self.embed_positions(positions)
        rope = self.rope.lookup(positions, x.dtype) if self.rope is not None else None
        return x, rope

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Dense causal forward: `[B, T]` ids -> `[B, T, V]` logits."""
        if positions is None:
            positions = torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(input_ids)
        x, rope = self.embed(input_ids, positions)
        for layer in self.layers:
            x = layer(x, rope)
        return self.lm_head(self.norm(x))

    def forward_paged(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """Flattened-step forward over the paged cache: `[T]` ids -> final hidden states `[T, H]`."""
        x, rope = self.embed(input_ids, positions)
        if self.embed_hook is not None:
            x = self.embed_hook(x)
        elif FastDecode.applies(x, meta):
            if self._fast_decode is _UNBUILT:
                self._fast_decode = build_fast_decode(self)
            if self._fast_decode is not None:
                return self._fast_decode(x, rope, meta, kv_caches)
        for layer, kv in zip(self.layers, kv_caches, strict=True):
            x = layer.forward_paged(x, rope, meta, kv)
        return self.norm(x)

    def reset_fast_paths(self) -> None:
        """Call after changing modules or hooks: the straight-line decode path is rebuilt (or not) on next use."""
        self._fast_decode = _UNBUILT

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)


_INIT_CLASSES = (nn.Linear, nn.Embedding, nn.LayerNorm)


def meta_model(cfg: ModelConfig) -> DecoderLM:
    """The model's modules on the meta device, not initialised: shapes for a loader to fill with `assign=True`.

    Why not just `with torch.device("meta")`: the random init still runs there, and on meta tensors its first
    call imports torch's compiler stack (~1.3 s of every model load).
    """
    saved = {cls: cls.__dict__["reset_parameters"] for cls in _INIT_CLASSES}
    try:
        for cls in _INIT_CLASSES:
            cls.reset_parameters = lambda self: None
        with torch.device("meta"):
            return DecoderLM(cfg)
    finally:
        for cls, fn in saved.items():
            cls.reset_parameters = fn
