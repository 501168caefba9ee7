"""Dequantization of GGUF (ggml) weight types, vectorised in torch.

Each function takes the raw blocks of a tensor as a uint8 tensor `[n_blocks, type_size]` and returns float32
values `[n_blocks, block_size]`. The arithmetic follows ggml's reference (`ggml-quants.c`) in float32, in the
same order, so the results are bit-identical to the `gguf` package's own `quants.dequantize` (tested on random
blocks for every type). Layouts, per block:

- Q8_0 (32): fp16 d, 32 x int8 q                              w = d * q
- Q4_0 (32): fp16 d, 16 bytes of nibbles (low: 0-15, high: 16-31)     w = d * (q - 8)
- Q4_1 (32): fp16 d, fp16 m, nibbles as Q4_0                  w = d * q + m
- Q5_0 / Q5_1 (32): as Q4_0 / Q4_1 plus 32 high bits in a uint32 (q - 16 for Q5_0)
- Q2_K .. Q6_K (256): a super-block of 16 or 8 sub-blocks, each with its own small integer scale (and
  minimum), times the super-block's fp16 d (and dmin).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

QK_K = 256
Q = GGMLQuantizationType


def _f16(b: torch.Tensor) -> torch.Tensor:
    """Little-endian fp16 bytes [..., 2k] -> float32 [..., k]."""
    return b.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """Bytes [n, 16] -> codes [n, 32]: the low nibbles are elements 0-15, the high ones 16-31."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def _bits(b: torch.Tensor, count: int) -> torch.Tensor:
    """Little-endian bit fields: bytes [n, count / 8] -> bits [n, count] (bit i of the field is column i)."""
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((b[..., :, None] >> shifts) & 1).reshape(*b.shape[:-1], count)


def q8_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b[:, :2])
    return b[:, 2:].contiguous().view(torch.int8).float() * d


def q4_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b[:, :2])
    return d * (_nibbles(b[:, 2:]).to(torch.int8) - 8).float()


def q4_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    return d * _nibbles(b[:, 4:]).float() + m


def q5_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b[:, :2])
    q = _nibbles(b[:, 6:]) | (_bits(b[:, 2:6], 32) << 4)
    return d * (q.to(torch.int8) - 16).float()


def q5_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    q = _nibbles(b[:, 8:]) | (_bits(b[:, 4:8], 32) << 4)
    return d * q.float() + m


def q2_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0xF).float()).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).reshape(n, 16, 1)
    shift = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).reshape(1, 1, 4, 1)
    q = ((qs.reshape(n, 2, 1, 32) >> shift) & 3).reshape(n, 16, 16).float()
    return (dl * q - ml).reshape(n, QK_K)


def q3_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    hmask, qs, scales, d = b[:, :32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
    # 16 six-bit scales: low 4 bits from bytes 0-7 (both nibbles), high 2 bits from bytes 8-11 (four pairs).
    lo = (scales[:, :8].reshape(n, 1, 8) >> torch.tensor([0, 4], dtype=torch.uint8).reshape(1, 2, 1)).reshape(n, 16)
    hi = (scales[:, 8:].reshape(n, 1, 4) >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8).reshape(1, 4, 1)).reshape(n, 16)
    sc = ((lo & 0x0F) | ((hi & 0x03) << 4)).to(torch.int8) - 32
    dl = (d * sc.float()).reshape(n, 16, 1)
    ql = (qs.reshape(n, 2, 1, 32) >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8).reshape(1, 1, 4, 1)) & 3
    qh = (hmask.reshape(n, 1, 1, 32) >> torch.arange(8, dtype=torch.uint8).reshape(1, 1, 8, 1)) & 1
    q = ql.reshape(n, 16, 16).to(torch.int8) - ((qh.reshape(n, 16, 16) ^ 1) << 2).to(torch.int8)
    return (dl * q.float()).reshape(n, QK_K)


def k_scale_min(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 six-bit scales and minimums packed in 12 bytes (Q4_K, Q5_K): [n, 12] -> ([n, 8], [n, 8])."""
    d, m, md = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def q4_k_parts(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_K as (codes uint8 [n, 256] in 0..15, per-32 scale [n, 8, 1], per-32 offset [n, 8, 1]):
    w = scale * q - offset, all float32 and exact (fp16 times a 6-bit integer)."""
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = k_scale_min(b[:, 4:16])
    qs = b[:, 16:].reshape(n, 4, 1, 32) >> torch.tensor([0, 4], dtype=torch.uint8).reshape(1, 1, 2, 1)
    return (qs & 0x0F).reshape(n, QK_K), (d * sc.float()).reshape(n, 8, 1), (dmin * mn.float()).reshape(n, 8, 1)


def q4_k(b: torch.Tensor) -> torch.Tensor:
    q, scale, offset = q4_k_parts(b)
    return (scale * q.reshape(-1, 8, 32).float() - offset).reshape(-1, QK_K)


def q5_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = k_scale_min(b[:, 4:16])
    qh, qs = b[:, 16:48], b[:, 48:]
    ql = (qs.reshape(n, 4, 1, 32) >> torch.tensor([0, 4], dtype=torch.uint8).reshape(1, 1, 2, 1)) & 0x0F
    hb = (qh.reshape(n, 1, 1, 32) >> torch.arange(8, dtype=torch.uint8).reshape(1, 1, 8, 1)) & 1
    q = (ql.reshape(n, 8, 32) | (hb.reshape(n, 8, 32) << 4)).float()
    return ((d * sc.float()).reshape(n, 8, 1) * q - (dmin * mn.float()).reshape(n, 8, 1)).reshape(n, QK_K)


def q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    ql, qh, scales, d = b[:, :128], b[:, 128:192], b[:, 192:208], _f16(b[:, 208:210])
    dl = (d * scales.contiguous().view(torch.int8).float()).reshape(n, 16, 1)
    lo = (ql.reshape(n, 2, 1, 64) >> torch.tensor([0, 4], dtype=torch.uint8).reshape(1, 1, 2, 1)) & 0x0F
    hi = (qh.reshape(n, 2, 1, 32) >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8).reshape(1, 1, 4, 1)) & 0x03
    q = (lo.reshape(n, 8, 32) | (hi.reshape(n, 8, 32) << 4)).to(torch.int8) - 32
    return (dl * q.reshape(n, 16, 16).float()).reshape(n, QK_K)


BLOCK_DEQUANT: dict[GGMLQuantizationType, Callable[[torch.Tensor], torch.Tensor]] = {
    Q.Q8_0: q8_0, Q.Q4_0: q4_0, Q.Q4_1: q4_1, Q.Q5_0: q5_0, Q.Q5_1: q5_1,
    Q.Q2_K: q2_k, Q.Q3_K: q3_k, Q.Q4_K: q4_k, Q.Q5_K: q5_k, Q.Q6_K: q6_k,
}
FLOAT_TYPES = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}
SUPPORTED_TYPES = tuple(FLOAT_TYPES) + tuple(BLOCK_DEQUANT)


class UnsupportedWeightTypeError(ValueError):
    """A GGUF tensor's weight type that we cannot read."""


def supported_type_names() -> str:
    return ", ".join(t.name for t in SUPPORTED_TYPES)


def check_type(qtype: GGMLQuantizationType, name: str = "tensor") -> None:
    if qtype not in SUPPORTED_TYPES:
        raise UnsupportedWeightTypeError(
            f"{name}: GGUF weight type {qtype.name} is not supported; supported: {supported_type_names()}")


def raw_bytes(data: np.ndarray) -> torch.Tensor:
    """A (memory-mapped) numpy array as a uint8 torch tensor over a private copy (mapped files are read-only)."""
    return torch.from_numpy(np.array(data, copy=True).reshape(-1).view(np.uint8))


def dequantize(data: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, ...],
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The values of a GGUF tensor (`data` as the gguf reader returns it) as a `shape` tensor of `dtype`."""
    return dequantize_bytes(raw_bytes(data), qtype, shape, dtype)


def dequantize_bytes(raw: torch.Tensor, qtype: GGMLQuantizationType, shape: tuple[int, ...],
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`dequantize` on a tensor's bytes already copied out of the file (uint8, any shape)."""
    check_type(qtype)
    raw = raw.reshape(-1)
    if qtype in FLOAT_TYPES:
        return raw.view(FLOAT_TYPES[qtype]).reshape(shape).to(dtype)
    _, size = GGML_QUANT_SIZES[qtype]
    return BLOCK_DEQUANT[qtype](raw.reshape(-1, size)).reshape(shape).to(dtype)
