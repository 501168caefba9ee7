"""A straight-line decode step for a few streams of a plain bf16 decoder on CPU.

At batch 1 the weights stream in ~17 ms per token for a 0.4B model, and Python was adding ~4 ms on top:
~15 module calls, dispatch checks and small torch ops per layer. This path walks the layers with one native
call per operation (norms, matmuls, rotary, attention, SwiGLU) on weights gathered once, and folds each
residual add into the next norm. It computes exactly what `Block.forward_paged` computes with the same
kernels; the decoder uses it only where every layer is the plain Llama/Qwen2/Mistral shape and nothing
(adapters, hooks, quantized weights) has changed the modules: anything else takes the general path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmasos.models.attention import AttentionMetadata
from llmasos.ops import Linear, native_kernels
from llmasos.ops.cpu_kernels import MAX_ROWS


@dataclass(frozen=True)
class _Layer:
    norm1: torch.Tensor
    eps1: float
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    norm2: torch.Tensor
    eps2: float
    up: torch.Tensor
    down: torch.Tensor


class FastDecode:
    def __init__(self, layers: list[_Layer], heads: int, kv_heads: int, head_dim: int, scale: float,
                 final_norm: torch.Tensor, final_eps: float) -> None:
        self.layers = layers
        self.heads, self.kv_heads, self.head_dim, self.scale = heads, kv_heads, head_dim, scale
        self.final_norm, self.final_eps = final_norm, final_eps
        self.ext = native_kernels()

    @staticmethod
    def applies(x: torch.Tensor, meta: AttentionMetadata) -> bool:
        return (not meta.prefills and meta.num_decodes == x.shape[0] <= MAX_ROWS
                and not torch.is_grad_enabled())

    def __call__(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata,
                 kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        ext, t = self.ext, x.shape[0]
        nh, nkv, d = self.heads, self.kv_heads, self.head_dim
        qk_width = (nh + nkv) * d
        cos, sin = rope
        slots, tables, lens = meta.slot_mapping, meta.decode_block_tables, meta.decode_context_lens
        pending = None  # the last MLP output, added to the residual stream by the next norm
        for layer, (k_cache, v_cache) in zip(self.layers, kv_caches, strict=True):
            if pending is None:
                h = ext.rms_norm(x, None, layer.norm1, layer.eps1)[0]
            else:
                h, x = ext.rms_norm(pending, x, layer.norm1, layer.eps1)
            qkv = ext.bf16_linear(h, layer.qkv, layer.qkv_bias)
            qk = ext.rope(qkv[:, :qk_width].unflatten(-1, (nh + nkv, d)), cos, sin)
            k_cache.view(-1, nkv, d).index_copy_(0, slots, qk[:, nh:])
            v_cache.view(-1, nkv, d).index_copy_(0, slots, qkv[:, qk_width:].unflatten(-1, (nkv, d)))
            o = ext.paged_decode_attention(qk[:, :nh], k_cache, v_cache, tables, lens, self.scale)
            attn = ext.bf16_linear(o.view(t, nh * d), layer.o, layer.o_bias)
            h, x = ext.rms_norm(attn, x, layer.norm2, layer.eps2)
            pending = ext.bf16_linear(ext.silu_mul(ext.bf16_linear(h, layer.up, None)), layer.down, None)
        return ext.rms_norm(pending, x, self.final_norm, self.final_eps)[0]


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

    layers = []
    for block in model.layers:
        attn, mlp = block.attn, block.mlp
        if (attn.kv_hook is not None or attn.q_norm is not None or type(mlp) is not MLP or not mlp.gated
                or mlp.up_proj.bias is not None or mlp.down_proj.bias is not None
                or not all(map(plain, (attn.qkv_proj, attn.o_proj, mlp.up_proj, mlp.down_proj)))
                or not (bf16(block.input_norm) and bf16(block.post_attn_norm))):
            return None
        layers.append(_Layer(
            block.input_norm.weight.detach(), block.input_norm.eps,
            attn.qkv_proj.weight.detach(), _detach(attn.qkv_proj.bias),
            attn.o_proj.weight.detach(), _detach(attn.o_proj.bias),
            block.post_attn_norm.weight.detach(), block.post_attn_norm.eps,
            mlp.up_proj.weight.detach(), mlp.down_proj.weight.detach(),
        ))
    a = model.layers[0].attn
    if not bf16(model.norm):
        return None
    return FastDecode(layers, a.num_heads, a.num_kv_heads, a.head_dim, a.scale, model.norm.weight.detach(),
                      model.norm.eps)


def _detach(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()
