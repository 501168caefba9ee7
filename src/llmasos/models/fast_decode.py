"""A straight-line decode step for a Llama-family decoder on CPU, any number of streams.

At batch 1 the general path issues ~15 module calls, dispatch checks and small torch ops per layer: for a
30-layer 135M model that is ~6 ms of Python per token on top of ~3 ms of weight streaming. This path runs the
whole step through the layers in one native call (`decode_layers` in `csrc/decode_step.cpp`: norms, matmuls,
rotary, KV write, attention, SwiGLU) on weights gathered once, and folds each residual add into the next norm.
Each linear layer keeps its own kernel choice: bf16 weights (oneDNN-prepacked past a few rows, where the engine
prepacked them) or int8 / int4 `QuantLinear`s, with the same row thresholds as `ops.linear` and
`ops.quant_linear`, so it computes exactly what `Block.forward_paged` computes. It applies wherever every layer
is the plain Llama / Mistral / Qwen2 / Qwen3 shape and nothing (adapters, hooks) has changed the modules;
anything else takes the general path.
"""

from __future__ import annotations

import torch

from llmasos.models.attention import AttentionMetadata
from llmasos.ops import Linear, native_kernels
from llmasos.ops.cpu_kernels import MAX_ROWS
from llmasos.ops.quant_linear import QuantLinear

BF16, INT8, INT4, INT4_SYM8 = 0, 1, 2, 3  # INT4_SYM8: mins = -8 x scales (Q4_0)


class FastDecode:
    def __init__(self, norms: list[torch.Tensor | None], linears: list[torch.Tensor | None], kinds: list[int],
                 row_limits: list[int], eps: list[float], heads: int, kv_heads: int, head_dim: int, scale: float,
                 final_norm: torch.Tensor, final_eps: float) -> None:
        self.norms, self.linears, self.kinds, self.eps = norms, linears, kinds, eps  # see decode_step.cpp
        self.row_limits = row_limits  # per linear: our kernels up to this many rows, then oneDNN
        self.heads, self.kv_heads, self.head_dim, self.scale = heads, kv_heads, head_dim, scale
        self.final_norm, self.final_eps = final_norm, final_eps
        self.ext = native_kernels()

    @staticmethod
    def applies(x: torch.Tensor, meta: AttentionMetadata) -> bool:
        return not meta.prefills and meta.num_decodes == x.shape[0] and not torch.is_grad_enabled()

    def __call__(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata,
                 kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        cos, sin = rope
        return self.ext.decode_layers(
            x, self.norms, self.linears, self.kinds, self.row_limits, self.eps, [k for k, _ in kv_caches],
            [v for _, v in kv_caches], meta.slot_mapping, cos, sin, meta.decode_block_tables,
            meta.decode_context_lens, self.heads, self.kv_heads, self.head_dim, self.scale, self.final_norm,
            self.final_eps)


def _linear_slots(lin: torch.nn.Module) -> tuple[list[torch.Tensor | None], list[int], int] | None:
    """(the 6 tensor slots, [kind, group], the row limit of our kernels) of a linear layer the native step can
    run, or None. The limit is the one `ops.linear` / `ops.quant_linear` apply, so both paths pick alike."""
    if type(lin) is Linear and lin.weight.dtype == torch.bfloat16 and lin.weight.is_cpu:
        return [lin.weight.detach(), None, None, _detach(lin.bias), lin.packed, None], [BF16, 0], MAX_ROWS
    if type(lin) is QuantLinear and lin.qweight.is_cpu and (lin.bias is None or lin.bias.dtype == torch.bfloat16):
        kind = INT8 if lin.bits == 8 else (INT4_SYM8 if lin.sym8 else INT4)
        return [lin.qweight, lin.scales, lin.mins, _detach(lin.bias), lin.packed, lin.interleaved], \
            [kind, lin.group_size], lin.native_rows()
    return None


def build(model: torch.nn.Module) -> FastDecode | None:
    """The fast path for `model` (a DecoderLM) as it is now, or None where it does not apply."""
    from llmasos.models.layers import MLP, RMSNorm

    cfg = model.config
    if native_kernels() is None or model.embed_hook is not None or model.rope is None \
            or not isinstance(model.norm, RMSNorm) or cfg.head_dim % 32:
        return None

    def bf16(norm: torch.nn.Module | None) -> bool:
        return isinstance(norm, RMSNorm) and norm.weight.dtype == torch.bfloat16 and norm.weight.is_cpu

    norms: list[torch.Tensor | None] = []
    linears: list[torch.Tensor | None] = []
    kinds: list[int] = []
    row_limits: list[int] = []
    eps: list[float] = []
    for block in model.layers:
        attn, mlp = block.attn, block.mlp
        if (attn.kv_hook is not None or type(mlp) is not MLP or not mlp.gated
                or not (bf16(block.input_norm) and bf16(block.post_attn_norm))
                or (attn.q_norm is not None and not (bf16(attn.q_norm) and bf16(attn.k_norm)))):
            return None
        if mlp.up_proj.bias is not None or mlp.down_proj.bias is not None:
            return None
        for lin in (attn.qkv_proj, attn.o_proj, mlp.up_proj, mlp.down_proj):
            slots = _linear_slots(lin)
            if slots is None:
                return None
            linears += slots[0]
            kinds += slots[1]
            row_limits.append(slots[2])
        qk = (attn.q_norm.weight.detach(), attn.k_norm.weight.detach()) if attn.q_norm is not None else (None, None)
        norms += [block.input_norm.weight.detach(), *qk, block.post_attn_norm.weight.detach()]
        eps += [block.input_norm.eps, block.post_attn_norm.eps, attn.q_norm.eps if attn.q_norm is not None else 0.0]
    a = model.layers[0].attn
    if not bf16(model.norm):
        return None
    return FastDecode(norms, linears, kinds, row_limits, eps, a.num_heads, a.num_kv_heads, a.head_dim, a.scale,
                      model.norm.weight.detach(), model.norm.eps)


def _detach(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()
