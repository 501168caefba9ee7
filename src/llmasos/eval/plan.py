"""Capacity planning from a model's `config.json` alone: parameters, memory, FLOPs and rough speeds.

Every figure is a closed-form count from the config (no weights are loaded); the speed estimates divide
those counts by measured (or given) hardware figures, so they are upper bounds of a roofline kind.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmasos.eval.hardware import Hardware
from llmasos.models.config import ModelConfig
from llmasos.models.loader import read_hf_config

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1, "int4": 0.5}
WEIGHT_DTYPES = ("float32", "bfloat16", "int8", "int4")
COMPUTE_DTYPES = ("bfloat16", "float32")
SCALE_BYTES = 2  # one fp16 scale per quantization group


def load_hf_config(name_or_path: str) -> dict[str, Any]:
    """`config.json` of a local HF directory, a config file, or a hub repo (only config.json is fetched)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
        return read_hf_config(path)
    if path.is_file():
        return json.loads(path.read_text())
    if str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1:
        raise FileNotFoundError(f"model directory {name_or_path} not found")
    from huggingface_hub import hf_hub_download

    try:
        return read_hf_config(Path(hf_hub_download(str(name_or_path), "config.json")).parent)
    except Exception as exc:  # offline, missing or gated repo: one clear message
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FileNotFoundError(
            f"could not get config.json of {name_or_path!r} from the Hugging Face hub (offline, or no such "
            f"repo?): {detail}"
        ) from exc


@dataclass
class ParamCounts:
    embedding: int  # token (+ learned position) embeddings
    lm_head: int  # 0 when tied to the token embeddings
    blocks: int  # transformer layers + final norm
    matmul: int  # weights multiplied per token: block linears + the output projection (tied or not)
    quantizable: int  # 2-D weights (embeddings, linears); norms and biases stay in 16 bit when quantized

    @property
    def total(self) -> int:
        return self.embedding + self.lm_head + self.blocks


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Exact parameter counts of the HF model this config describes (biases and q/k norms included)."""
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    norm = h * (2 if cfg.norm == "layer" else 1)
    attn_w = h * (q + 2 * kv) + q * h
    mlp_w = h * i * (3 if cfg.gated_mlp else 2)
    small = 2 * norm  # per layer: two norms, then any biases and q/k norms
    small += (q + 2 * kv) if cfg.qkv_bias else 0
    small += h if cfg.o_bias else 0
    small += ((2 * i if cfg.gated_mlp else i) + h) if cfg.mlp_bias else 0
    small += 2 * cfg.head_dim if cfg.qk_norm else 0
    embedding = v * h + (cfg.max_position * h if cfg.learned_positions else 0)
    lm_head = 0 if cfg.tie_word_embeddings else v * h
    return ParamCounts(
        embedding=embedding,
        lm_head=lm_head,
        blocks=cfg.num_layers * (attn_w + mlp_w + small) + norm,
        matmul=cfg.num_layers * (attn_w + mlp_w) + v * h,
        quantizable=embedding + lm_head + cfg.num_layers * (attn_w + mlp_w),
    )


def weight_bytes(n_quantizable: int, n_other: int, dtype: str, group_size: int) -> int:
    """Bytes for weights in `dtype`; int8/int4 keep one fp16 scale per `group_size` weights, 1-D params bf16."""
    if dtype in ("int8", "int4"):
        packed = math.ceil(n_quantizable * DTYPE_BYTES[dtype]) + math.ceil(n_quantizable / group_size) * SCALE_BYTES
        return packed + n_other * 2
    return int((n_quantizable + n_other) * DTYPE_BYTES[dtype])


def kv_bytes_per_token(cfg: ModelConfig, dtype: str = "bfloat16") -> int:
    """K and V for every layer: 2 * layers * kv_heads * head_dim * bytes."""
    return int(2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * DTYPE_BYTES[dtype])


def attention_flops(cfg: ModelConfig, context: float) -> float:
    """FLOPs of one query token over `context` keys: QK^T and the weighted sum of V, 2 FLOPs per MAC each."""
    return 4 * cfg.num_layers * context * cfg.num_heads * cfg.head_dim


def activation_bytes(cfg: ModelConfig, seq_len: int, micro_batch: int, dtype: str) -> int:
    """Rough activations kept for backward, no checkpointing, SDPA attention (no T x T scores kept).

    Per layer and token: norm inputs and outputs (4h), q, attention output and o_proj input (3 q_dim),
    k and v (2 kv_dim), MLP intermediates (3i gated, 2i otherwise), in `dtype`; then the final norm and
    lm_head inputs (2h) and the logits in `dtype` plus their fp32 log-softmax (V each).
    """
    h, i = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    b = DTYPE_BYTES[dtype]
    per_layer = 4 * h + 3 * q + 2 * kv + (3 if cfg.gated_mlp else 2) * i
    per_token = cfg.num_layers * per_layer * b + 2 * h * b + cfg.vocab_size * (b + 4)
    return int(seq_len * micro_batch * per_token)


def make_plan(cfg: ModelConfig, hw: Hardware | None = None, context: int | None = None, batch: int = 1,
              seq_len: int | None = None, micro_batch: int = 1, kv_dtype: str = "bfloat16",
              train_dtype: str = "bfloat16", group_size: int = 128) -> dict[str, Any]:
    """The whole report as a JSON-ready dict (bytes, FLOPs and tokens/s as plain numbers)."""
    context = context or min(cfg.max_position, 4096)
    seq_len = seq_len or min(cfg.max_position, 2048)
    for name, value in [("context", context), ("batch", batch), ("seq_len", seq_len), ("micro_batch", micro_batch),
                        ("group_size", group_size)]:
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    for name, value in [("kv_dtype", kv_dtype), ("train_dtype", train_dtype)]:
        if value not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"{name} must be float32, bfloat16 or float16, got {value!r}")
    p = param_counts(cfg)
    other = p.total - p.quantizable
    weights = {d: weight_bytes(p.quantizable, other, d, group_size) for d in WEIGHT_DTYPES}
    # Decoding one token reads every weight but the embedding table(s), of which it reads one row; a tied
    # table is still read whole, as the output projection.
    read_q, read_other = p.quantizable - p.embedding + (0 if p.lm_head else cfg.vocab_size * cfg.hidden_size), other
    read_bytes = {d: weight_bytes(read_q, read_other, d, group_size) for d in WEIGHT_DTYPES}
    kv_tok = kv_bytes_per_token(cfg, kv_dtype)

    fwd_decode = 2 * p.matmul + attention_flops(cfg, context)
    fwd_prefill = 2 * p.matmul + attention_flops(cfg, context / 2)  # causal: keys average half the prompt
    train_flops = 3 * (2 * p.matmul + attention_flops(cfg, seq_len / 2))  # backward ~ 2x forward

    n_params = p.total
    train_mem = {
        "weights": n_params * 4, "grads": n_params * 4, "optimizer": n_params * 8,
        "activations": activation_bytes(cfg, seq_len, micro_batch, train_dtype),
    }
    train_mem["total"] = sum(train_mem.values())

    throughput: dict[str, Any] = {"decode_tok_s": {}, "prefill_tok_s": {}, "training_tok_s": {}}
    if hw is not None:
        for d in WEIGHT_DTYPES:
            per_tok = read_bytes[d] + kv_tok * context
            throughput["decode_tok_s"][d] = hw.bandwidth_gbs * 1e9 / per_tok if hw.bandwidth_gbs else None
        for d in COMPUTE_DTYPES:
            tf = hw.tflops.get(d)
            throughput["prefill_tok_s"][d] = tf * 1e12 / fwd_prefill if tf else None
            throughput["training_tok_s"][d] = tf * 1e12 / train_flops if tf else None

    return {
        "config": {
            "family": cfg.family, "layers": cfg.num_layers, "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size, "heads": cfg.num_heads, "kv_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim, "vocab_size": cfg.vocab_size, "max_position": cfg.max_position,
            "tie_word_embeddings": cfg.tie_word_embeddings,
        },
        "params": {"total": p.total, "embedding": p.embedding, "lm_head": p.lm_head,
                   "non_embedding": p.total - p.embedding, "matmul": p.matmul},
        "weights_bytes": weights,
        "weights_note": f"int8/int4: 2-D weights packed + one fp16 scale per {group_size}; norms and biases bf16",
        "kv_cache": {"dtype": kv_dtype, "bytes_per_token": kv_tok, "context": context, "batch": batch,
                     "bytes": kv_tok * context * batch},
        "training": {
            "dtype": train_dtype, "seq_len": seq_len, "micro_batch": micro_batch, **train_mem,
            "method": "fp32 weights + fp32 grads + AdamW fp32 exp_avg/exp_avg_sq (16 bytes/param); activations in "
                      f"{train_dtype} kept for backward without checkpointing (rough, see docs/eval.md)",
        },
        "flops_per_token": {"forward_decode": fwd_decode, "forward_prefill": fwd_prefill, "training": train_flops,
                            "6N": 6 * p.matmul, "context": context},
        "hardware": hw.to_dict() if hw is not None else None,
        "throughput": throughput,
        "throughput_note": "upper bounds: decode at batch 1 = bandwidth / (weights read + KV at context); "
                           "prefill = matmul FLOP/s / prefill FLOPs per token; training = matmul FLOP/s / "
                           "training FLOPs per token",
    }
