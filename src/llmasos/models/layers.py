"""Building blocks shared by the decoder families: norms, rotary embeddings, MLPs."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmasos.ops import Linear, native_bf16, swiglu


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ext = native_bf16(x, self.weight)
        if ext is not None:
            return ext.rms_norm(x, None, self.weight, self.eps)[0]
        # Normalise in fp32 like the reference implementations (so bf16 runs agree with them), in one fused
        # op: decode steps are dominated by per-op overhead, not arithmetic.
        return self.weight * F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)


def add_and_norm(norm: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + residual, norm(x + residual)): the residual stream and the next sublayer's input, in one native
    pass for RMSNorm at bf16 inference."""
    if isinstance(norm, RMSNorm):
        ext = native_bf16(x, residual, norm.weight)
        if ext is not None:
            out, total = ext.rms_norm(x, residual, norm.weight, norm.eps)
            return total, out
    total = x + residual
    return total, norm(total)


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    if kind == "rms":
        return RMSNorm(dim, eps)
    if kind == "layer":
        return nn.LayerNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}")


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    """Inverse frequencies of RoPE, with linear or Llama 3 frequency-dependent scaling."""
    # Computed on the CPU whatever the default device: under a meta-device context (loaders) the tables are
    # still real, and moved with the model afterwards.
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device="cpu") / head_dim))
    if not scaling:
        return inv_freq.float()
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        return (inv_freq / scaling["factor"]).float()
    if kind == "freq_factors":  # GGUF files: one divisor per frequency (llama.cpp's rope_freqs tensor)
        factors = torch.tensor(scaling["factors"], dtype=torch.float64, device="cpu")
        if factors.numel() != inv_freq.numel():
            raise ValueError(f"rope freq_factors has {factors.numel()} values; expected {inv_freq.numel()}")
        return (inv_freq / factors).float()
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        old_ctx = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
        scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
        return torch.where(medium, smoothed, scaled).float()
    raise ValueError(f"unsupported rope scaling {kind!r}; supported: default, linear, llama3, freq_factors")


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables indexed by absolute position (half-split layout, as in HF checkpoints).

    The model looks the tables up once per forward (`lookup`) and every layer reuses the result.
    """

    def __init__(self, head_dim: int, max_position: int, theta: float, scaling: dict[str, Any] | None) -> None:
        super().__init__()
        inv_freq = rope_inv_freq(head_dim, theta, scaling)
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float32, device="cpu"), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def lookup(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # Cast after the fp32 computation, as the reference implementations do.
        return self.cos[positions].unsqueeze(-2).to(dtype), self.sin[positions].unsqueeze(-2).to(dtype)


def apply_rope(x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x: [..., T, heads, head_dim]; cos/sin: [..., T, 1, head_dim]."""
    cos, sin = cos_sin
    if x.dim() == 3 and x.shape[-1] % 32 == 0 and x.stride(-1) == 1 and x.stride(-2) == x.shape[-1]:
        ext = native_bf16(x, cos)
        if ext is not None:
            return ext.rope(x, cos, sin)
    return x * cos + _rotate_half(x) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class MLP(nn.Module):
    """SwiGLU (gate and up fused into one matmul) or the classic two-layer GELU MLP."""

    def __init__(self, hidden: int, inner: int, gated: bool, activation: str, bias: bool) -> None:
        super().__init__()
        self.gated = gated
        self.activation = activation
        self.up_proj = Linear(hidden, inner * (2 if gated else 1), bias=bias)
        self.down_proj = Linear(inner, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up_proj(x)
        if self.gated:
            h = swiglu(h)
        elif self.activation == "gelu_tanh":
            h = F.gelu(h, approximate="tanh")
        else:
            h = F.gelu(h)
        return self.down_proj(h)
