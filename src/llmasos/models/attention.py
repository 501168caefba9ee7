"""Attention over a paged KV cache.

The cache of one layer is a pool of fixed-size blocks, `[num_blocks, block_size, kv_heads, head_dim]` for K
and for V. A step's tokens arrive flattened: first one token for each decoding sequence, then the prefill
chunks. New K/V are written to their slots, then each query attends to its sequence's blocks. bf16 on CPU runs our
kernels for both decode and prefill attention (`ops/csrc/cpu_kernels.cpp`); everything else, torch's SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from llmasos.ops import native_kernels


@dataclass
class PrefillChunk:
    start: int  # offset of the chunk's first token in the flattened step
    length: int  # tokens in this chunk
    context_len: int  # tokens of the sequence in cache after this chunk (cached prefix + chunk)
    block_table: torch.Tensor  # [blocks] int64


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64: flat slot (block * block_size + offset) of each token
    block_size: int
    num_decodes: int = 0
    decode_block_tables: torch.Tensor | None = None  # [B, max_blocks]
    decode_context_lens: torch.Tensor | None = None  # [B]
    decode_max_len: int = 0
    prefills: list[PrefillChunk] = field(default_factory=list)


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
    heads, dim = k_cache.shape[-2:]
    if k_cache.dtype == torch.bfloat16 and k_cache.device.type == "cpu" and k.dtype == v.dtype == torch.bfloat16 \
            and k.stride(-1) == v.stride(-1) == 1 and k.stride(-2) == v.stride(-2) == dim:
        ext = native_kernels()
        if ext is not None:
            ext.write_kv(k_cache, v_cache, k, v, slots)
            return
    k_cache.view(-1, heads, dim).index_copy_(0, slots, k)
    v_cache.view(-1, heads, dim).index_copy_(0, slots, v)


def paged_attention(
    q: torch.Tensor,  # [T, Hq, D]
    k: torch.Tensor,  # [T, Hkv, D] (this step's keys, already written to the cache)
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    out = torch.empty_like(q)
    hq, d = q.shape[1], q.shape[2]
    hkv = k.shape[1]
    group = hq // hkv
    nd = meta.num_decodes
    native = native_kernels() if q.dtype == torch.bfloat16 and q.device.type == "cpu" and d % 32 == 0 else None
    if nd:
        if native is not None:
            out[:nd] = native.paged_decode_attention(q[:nd], k_cache, v_cache, meta.decode_block_tables,
                                                     meta.decode_context_lens, scale)
        else:
            out[:nd] = _decode_attention_torch(q[:nd], k_cache, v_cache, meta, scale)
    for p in meta.prefills:
        qs = q[p.start : p.start + p.length]
        if p.context_len == p.length:
            ks, vs = k[p.start : p.start + p.length], v[p.start : p.start + p.length]
        else:
            # Part of the context is cached (earlier chunks or a shared prefix): read it from the blocks.
            slots = _slots(p.block_table, p.context_len, meta.block_size)
            ks, vs = k_cache.view(-1, hkv, d)[slots], v_cache.view(-1, hkv, d)[slots]
        if native is not None:
            out[p.start : p.start + p.length] = native.prefill_attention(qs, ks, vs, scale)
        else:
            out[p.start : p.start + p.length] = _prefill_attention_torch(qs, ks, vs, group, scale)
    return out


def _prefill_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: int,
                             scale: float) -> torch.Tensor:
    """Causal attention of q [n, Hq, D] at the end of a context k, v [L, Hkv, D] (L >= n)."""
    n, length = q.shape[0], k.shape[0]
    if length == n:
        mask, causal = None, True
    else:
        qpos = torch.arange(n, device=q.device)[:, None] + (length - n)
        mask, causal = torch.arange(length, device=q.device)[None, :] <= qpos, False
    # 4-D inputs with K/V heads repeated for GQA take the fused (flash) CPU kernel; 3-D inputs or
    # enable_gqa fall back to the unfused math path, about 15x slower here.
    ks = _repeat_kv(k, group).transpose(0, 1)[None]
    vs = _repeat_kv(v, group).transpose(0, 1)[None]
    o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], ks, vs, attn_mask=mask, is_causal=causal, scale=scale)
    return o[0].transpose(0, 1)


def _decode_attention_torch(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            meta: AttentionMetadata, scale: float) -> torch.Tensor:
    nd, hq, d = q.shape
    hkv = k_cache.shape[2]
    bs = meta.block_size
    nblocks = (meta.decode_max_len + bs - 1) // bs
    tables = meta.decode_block_tables[:, :nblocks].reshape(-1)
    # Gather each sequence's blocks into one [B, Hkv, L, D] view (index_select: a plain row copy, several
    # times faster than advanced indexing); padding slots are masked below.
    kd = k_cache.index_select(0, tables).view(nd, nblocks * bs, hkv, d).transpose(1, 2)
    vd = v_cache.index_select(0, tables).view(nd, nblocks * bs, hkv, d).transpose(1, 2)
    # GQA without repeating K/V: the query heads of one KV head act as that many query rows.
    qd = q.view(nd, hkv, hq // hkv, d)
    mask = torch.arange(nblocks * bs, device=q.device)[None, :] < meta.decode_context_lens[:, None]
    # Slots past a sequence's length hold whatever the (unzeroed) pool held: a NaN there would survive the
    # mask (0 * NaN), so clear them in the gathered copies.
    pad = ~mask[:, None, :, None]
    kd, vd = kd.masked_fill(pad, 0), vd.masked_fill(pad, 0)
    o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask[:, None, None, :], scale=scale)
    return o.reshape(nd, hq, d)


def _repeat_kv(x: torch.Tensor, group: int) -> torch.Tensor:
    """[T, Hkv, D] -> [T, Hkv * group, D], each KV head serving its `group` query heads."""
    if group == 1:
        return x
    t, h, d = x.shape
    return x[:, :, None, :].expand(t, h, group, d).reshape(t, h * group, d)


def _slots(block_table: torch.Tensor, length: int, block_size: int) -> torch.Tensor:
    nblocks = (length + block_size - 1) // block_size
    offs = torch.arange(block_size, device=block_table.device)
    return (block_table[:nblocks, None] * block_size + offs[None, :]).reshape(-1)[:length]
