"""GGUF blocks onto our quantized kernels' formats, without changing a single weight.

- Q8_0 -> int8 with one fp16 scale per 32 inputs (`w = q * d`).
- Q4_0 -> int4 groups of 32 with fp16 scale d and minimum -8 d (exact: a power-of-two multiple).
- Q4_1 -> int4 groups of 32 with fp16 scale d and minimum m.
- Q4_K -> int4 groups of 32 with fp32 scale d * sc and minimum -dmin * m (fp16 times a 6-bit integer needs
  up to 17 significant bits: exact in fp32, not in fp16 or bf16).

Only the nibble order changes: GGUF keeps elements j and j+16 of a 32-block in one byte, our kernels elements
t and t+32 of a 64-block (`ops.quant_linear.pack_int4`).
"""

from __future__ import annotations

import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from llmasos.models.gguf.dequant import _f16, _nibbles, q4_k_parts
from llmasos.ops.quant_linear import INT4_BLOCK, pack_int4

Q = GGMLQuantizationType
INT8_TYPES = {Q.Q8_0}
INT4_TYPES = {Q.Q4_0, Q.Q4_1, Q.Q4_K}


def native_kind(qtype: GGMLQuantizationType, in_features: int) -> str | None:
    """'int8', 'int4' or None (dequantize) for a matrix of this type and input width."""
    if qtype in INT8_TYPES:
        return "int8"
    if qtype in INT4_TYPES and in_features % INT4_BLOCK == 0:
        return "int4"
    return None


def to_int8(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q8_0 rows (uint8 `[N, K/32 * 34]`) -> (q int8 `[N, K]`, scales fp16 `[N, K/32]`)."""
    n = rows.shape[0]
    b = rows.reshape(-1, GGML_QUANT_SIZES[Q.Q8_0][1])
    scales = b[:, :2].contiguous().view(torch.float16).reshape(n, -1)
    q = b[:, 2:].contiguous().view(torch.int8).reshape(n, -1)
    return q, scales


def to_int4(rows: torch.Tensor, qtype: GGMLQuantizationType) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_0 / Q4_1 / Q4_K rows -> (packed uint8 `[N, K/2]`, scales `[N, K/32]`, mins `[N, K/32]`)."""
    n = rows.shape[0]
    b = rows.reshape(-1, GGML_QUANT_SIZES[qtype][1])
    if qtype == Q.Q4_K:
        codes, scale, offset = q4_k_parts(b)
        scales, mins = scale.reshape(n, -1), (-offset).reshape(n, -1)
    elif qtype == Q.Q4_1:
        codes = _nibbles(b[:, 4:])
        scales, mins = b[:, :2].contiguous().view(torch.float16), b[:, 2:4].contiguous().view(torch.float16)
    elif qtype == Q.Q4_0:
        codes = _nibbles(b[:, 2:])
        d = b[:, :2].contiguous().view(torch.float16)
        scales, mins = d, (_f16(b[:, :2]) * -8).to(torch.float16)
    else:
        raise ValueError(f"{qtype.name} does not map onto int4")
    return pack_int4(codes.reshape(n, -1)), scales.reshape(n, -1), mins.reshape(n, -1)
