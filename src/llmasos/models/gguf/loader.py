"""Build a `DecoderLM` from a GGUF file: names mapped onto our modules, weights quantized natively where our
kernels run the file's format (see `packing`), dequantized to the requested dtype everywhere else."""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from gguf.constants import GGMLQuantizationType

from llmasos.models.config import ModelConfig
from llmasos.models.decoder import DecoderLM, meta_model
from llmasos.models.gguf import packing
from llmasos.models.gguf.dequant import check_type, dequantize, dequantize_bytes, raw_bytes
from llmasos.models.gguf.reader import GGUFFile, GGUFTensor
from llmasos.models.layers import RotaryEmbedding
from llmasos.ops.quant_linear import QuantLinear

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _open(path: str, _mtime: float, _size: int) -> GGUFFile:
    return GGUFFile(path)


def open_gguf(path: str | Path) -> GGUFFile:
    """The parsed file, shared by the model and tokenizer loaders (parsing a large vocabulary takes ~0.5 s)."""
    p = Path(path).expanduser().resolve()
    st = os.stat(p)
    return _open(str(p), st.st_mtime, st.st_size)


@dataclass
class _Rows:
    """One matrix of the file as raw rows (for block types: `[N, bytes per row]` uint8)."""

    qtype: GGMLQuantizationType
    rows: torch.Tensor
    shape: tuple[int, int]  # [out, in]

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_bytes(self.rows, self.qtype, self.shape, dtype)


def _rows(t: GGUFTensor, perm: torch.Tensor | None = None) -> _Rows:
    if len(t.shape) != 2:
        raise ValueError(f"{t.name}: expected a matrix, got shape {t.shape}")
    rows = raw_bytes(t.data).reshape(t.shape[0], -1)
    if perm is not None:  # whole rows move: exact for every block type (blocks never cross a row)
        rows = rows[perm]
    return _Rows(t.qtype, rows, t.shape)


def _unpermute(heads: int, rows: int) -> torch.Tensor:
    """Row order undoing llama.cpp's q/k permutation for Llama files (it stores each head's rotary pairs
    interleaved; our rotary layout, like HF's, keeps the two halves apart)."""
    d = rows // heads
    per_head = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])
    return (torch.arange(heads)[:, None] * d + per_head[None, :]).reshape(-1)


def _linear(parts: list[_Rows], bias: torch.Tensor | None, dtype: torch.dtype, quantized: bool,
            ) -> torch.nn.Module | torch.Tensor:
    """Rows of one or more matrices stacked into one layer (fused q|k|v, gate|up): a QuantLinear where every
    part maps onto the same native format, else the dense weight."""
    k = parts[0].shape[1]
    kinds = {packing.native_kind(p.qtype, k) for p in parts}
    if quantized and len(kinds) == 1 and None not in kinds:
        if kinds == {"int8"}:
            qs, scales = zip(*(packing.to_int8(p.rows) for p in parts), strict=True)
            return QuantLinear.from_packed(torch.cat(qs), _common(scales), bias=bias)
        packed, scales, mins = zip(*(packing.to_int4(p.rows, p.qtype) for p in parts), strict=True)
        return QuantLinear.from_packed(torch.cat(packed), _common(scales), _common(mins), group_size=32, bias=bias)
    return torch.cat([p.dense(dtype) for p in parts])


def _common(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    dtype = torch.float32 if any(t.dtype == torch.float32 for t in tensors) else tensors[0].dtype
    return torch.cat([t.to(dtype) for t in tensors])  # fp16 -> fp32 is exact


def load_gguf_model(path: str | Path, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                    quantized: bool | None = None) -> DecoderLM:
    """The model in a GGUF file. `quantized`: keep Q8_0 / Q4_0 / Q4_1 / Q4_K weights in their format and run
    them with our kernels (default for bf16 on CPU, where those kernels run); False dequantizes everything to
    `dtype` (the default elsewhere: float32 evaluation, GPUs)."""
    f = open_gguf(path)
    cfg = ModelConfig.from_hf(f.hf_config())
    device = torch.device(device)
    if quantized is None:
        quantized = device.type == "cpu" and dtype == torch.bfloat16
    tensors = f.tensors
    for t in tensors.values():
        check_type(t.qtype, t.name)

    def need(name: str) -> GGUFTensor:
        if name not in tensors:
            raise ValueError(f"{f.path.name}: tensor {name!r} is missing")
        return tensors[name]

    def vec(name: str) -> torch.Tensor:
        t = need(name)
        return dequantize(t.data, t.qtype, t.shape, dtype)

    def opt_vec(name: str) -> torch.Tensor | None:
        return vec(name) if name in tensors else None

    permute = f.architecture == "llama"
    q_rows, kv_rows = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    q_perm = _unpermute(cfg.num_heads, q_rows) if permute else None
    k_perm = _unpermute(cfg.num_kv_heads, kv_rows) if permute else None

    dense: dict[str, torch.Tensor] = {}
    modules: dict[str, torch.nn.Module] = {}

    def put(name: str, value: torch.nn.Module | torch.Tensor) -> None:
        if isinstance(value, torch.nn.Module):
            modules[name] = value
        else:
            dense[f"{name}.weight"] = value

    def cat_bias(*names: str, perms: tuple[torch.Tensor | None, ...]) -> torch.Tensor | None:
        parts = [opt_vec(n) for n in names]
        if all(p is None for p in parts):
            return None
        return torch.cat([p[perm] if perm is not None else p for p, perm in zip(parts, perms, strict=True)])

    for i in range(cfg.num_layers):
        b, m = f"blk.{i}.", f"layers.{i}."
        dense[f"{m}input_norm.weight"] = vec(f"{b}attn_norm.weight")
        dense[f"{m}post_attn_norm.weight"] = vec(f"{b}ffn_norm.weight")
        qkv_bias = cat_bias(f"{b}attn_q.bias", f"{b}attn_k.bias", f"{b}attn_v.bias", perms=(q_perm, k_perm, None))
        if qkv_bias is not None:
            qkv_bias = qkv_bias.to(dtype)
        qkv = _linear([_rows(need(f"{b}attn_q.weight"), q_perm), _rows(need(f"{b}attn_k.weight"), k_perm),
                       _rows(need(f"{b}attn_v.weight"))], qkv_bias, dtype, quantized)
        put(f"{m}attn.qkv_proj", qkv)
        if qkv_bias is not None and not isinstance(qkv, torch.nn.Module):
            dense[f"{m}attn.qkv_proj.bias"] = qkv_bias
        put(f"{m}attn.o_proj", _linear([_rows(need(f"{b}attn_output.weight"))], None, dtype, quantized))
        if cfg.qk_norm:
            dense[f"{m}attn.q_norm.weight"] = vec(f"{b}attn_q_norm.weight")
            dense[f"{m}attn.k_norm.weight"] = vec(f"{b}attn_k_norm.weight")
        put(f"{m}mlp.up_proj", _linear([_rows(need(f"{b}ffn_gate.weight")), _rows(need(f"{b}ffn_up.weight"))],
                                       None, dtype, quantized))
        put(f"{m}mlp.down_proj", _linear([_rows(need(f"{b}ffn_down.weight"))], None, dtype, quantized))
    embed = need("token_embd.weight")
    dense["embed_tokens.weight"] = dequantize(embed.data, embed.qtype, embed.shape, dtype)
    dense["norm.weight"] = vec("output_norm.weight")
    head = _linear([_rows(tensors.get("output.weight", embed))], None, dtype, quantized)
    if isinstance(head, torch.nn.Module):
        modules["lm_head"] = head
    elif "output.weight" in tensors:
        dense["lm_head.weight"] = head

    model = meta_model(cfg)
    for name, module in modules.items():
        model.set_submodule(name, module)
    model.load_state_dict(dense, strict=False, assign=True)
    if "lm_head" not in modules and "output.weight" not in tensors:
        model.lm_head.weight = model.embed_tokens.weight
    elif "lm_head" in modules and "output.weight" not in tensors:
        model.lm_head.dense = model.embed_tokens.weight.detach()  # the same weights, for many-row steps
    model.rope = RotaryEmbedding(cfg.head_dim, cfg.max_position, cfg.rope_theta, cfg.rope_scaling)
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing:
        raise ValueError(f"{f.path.name}: no weights for {', '.join(missing[:5])}")
    model.to(device)  # QuantLinear buffers keep their own dtypes
    counts = Counter(t.qtype.name for t in tensors.values())
    native = sum(isinstance(mod, QuantLinear) for mod in model.modules())
    model.quantization = {"quant_method": "gguf", "types": dict(counts), "native_layers": native}
    log.debug("loaded %s: %s, %d layers run quantized", f.path.name, dict(counts), native)
    return model.eval()
