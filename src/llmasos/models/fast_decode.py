"""A straight-line decode step for a few streams of a plain bf16 decoder on CPU.

At batch 1 the weights stream in ~17 ms per token for a 0.4B model, and Python was adding ~4 ms on top:
~15 module calls, dispatch checks and small torch ops per layer. This path runs the whole step through the
layers in one native call (`decode_layers`: norms, matmuls, rotary, KV write, attention, SwiGLU) on weights
gathered once, and folds each residual add into the next norm. It computes exactly what
`Block.forward_paged` computes with the same kernels; the decoder uses it only where every layer is the plain
Llama/Qwen2/Mistral shape and nothing (adapters, hooks, quantized weights) has changed the modules: anything
else takes the general path.
"""

from __future__ import annotations

import torch

from llmasos.models.attention import AttentionMetadata
from llmasos.ops import Linear, native_kernels
from llmasos.ops.cpu_kernels import MAX_ROWS


class FastDecode:
    def __init__(self, weights: list[torch.Tensor | None], eps: list[float], heads: int, kv_heads: int,
                 head_dim: int, scale: float, final_norm: torch.Tensor, final_eps: float) -> None:
        self.weights, self.eps = weights, eps  # per layer: see decode_layers in csrc/cpu_kernels.cpp
        self.heads, self.kv_heads, self.head_dim, self.scale = heads, kv_heads, head_dim, scale
        self.final_norm, self.final_eps = final_norm, final_eps
        self.ext = native_kernels()

    @staticmethod
    def applies(x: torch.Tensor, meta: AttentionMetadata) -> bool:
        return (not meta.prefills and meta.num_decodes == x.shape[0] <= MAX_ROWS
                and not torch.is_grad_enabled())

    def __call__(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata,
                 kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        cos, sin = rope
        return self.ext.decode_layers(
            x, self.weights, self.eps, [k for k, _ in kv_caches], [v for _, v in kv_caches], meta.slot_mapping,
            cos, sin, meta.decode_block_tables, meta.decode_context_lens, self.heads, self.kv_heads,
            self.head_dim, self.scale, self.final_norm, self.final_eps)


def build(model: torch.nn.Module) -> FastDecode | None:
    """The fast path for `model` (a DecoderLM) as it is now, or None where it does not apply."""
    from llmasos.models.layers import MLP, RMSNorm

    cfg = model.config
    if native_kernels() is None or model.embed_hook is not None or model.rope is None \
            or not isinstance(model.norm, RMSNorm) or cfg.head_dim % 32:
        return None

    def plain(lin: torch.nn.Module) -> bool:
        return type(lin) is Linear and lin.weight.dtype == torch.bfloat16 and lin.weight.is_cpu

    def bf16(norm: torch.nn.Module) -> bool:
        return isinstance(norm, RMSNorm) and norm.weight.dtype == torch.bfloat16

    weights: list[torch.Tensor | None] = []
    eps: list[float] = []
    for block in model.layers:
        attn, mlp = block.attn, block.mlp
        if (attn.kv_hook is not None or attn.q_norm is not None or type(mlp) is not MLP or not mlp.gated
                or mlp.up_proj.bias is not None or mlp.down_proj.bias is not None
                or not all(map(plain, (attn.qkv_proj, attn.o_proj, mlp.up_proj, mlp.down_proj)))
                or not (bf16(block.input_norm) and bf16(block.post_attn_norm))):
            return None
        weights += [block.input_norm.weight, attn.qkv_proj.weight, attn.qkv_proj.bias, attn.o_proj.weight,
                    attn.o_proj.bias, block.post_attn_norm.weight, mlp.up_proj.weight, mlp.down_proj.weight]
        eps += [block.input_norm.eps, block.post_attn_norm.eps]
    a = model.layers[0].attn
    if not bf16(model.norm):
        return None
    return FastDecode([_detach(w) for w in weights], eps, a.num_heads, a.num_kv_heads, a.head_dim, a.scale,
                      model.norm.weight.detach(), model.norm.eps)


def _detach(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()
