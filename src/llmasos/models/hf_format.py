"""Writing native models back out as Hugging Face checkpoints.

The inverse of `loader.convert_state_dict`: fused q/k/v and gate/up projections are split again and named as
`transformers` names them, so what the toolchain trains loads in transformers, vLLM or llama.cpp's converter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from llmasos.models.config import ModelConfig

HF_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
}


def make_hf_config(family: str, vocab_size: int, eos_token_id: int | list[int] | None = 2, pad_token_id: int = 0,
                   **kw: Any) -> dict[str, Any]:
    """A complete `config.json` dict for `family`, from HF-style keys (hidden_size, num_hidden_layers, ...)."""
    import transformers as tf

    if family not in HF_CLASSES:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(HF_CLASSES)}")
    common = dict(vocab_size=vocab_size, bos_token_id=None, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    if family == "gpt2":
        kw = dict(kw)
        renames = {"hidden_size": "n_embd", "intermediate_size": "n_inner", "num_hidden_layers": "n_layer",
                   "num_attention_heads": "n_head", "max_position_embeddings": "n_positions"}
        kw = {renames.get(k, k): v for k, v in kw.items() if k != "num_key_value_heads"}
    else:
        kw.setdefault("max_position_embeddings", 2048)
    cfg = getattr(tf, HF_CLASSES[family][0])(**common, **kw)
    out = cfg.to_dict()
    out["architectures"] = [HF_CLASSES[family][1]]
    return out


def to_hf_state_dict(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our parameter names -> transformers' (tied lm_head left out, as `save_pretrained` does)."""
    out: dict[str, torch.Tensor] = {}
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    if cfg.family == "gpt2":
        out["transformer.wte.weight"] = state["embed_tokens.weight"]
        out["transformer.wpe.weight"] = state["embed_positions.weight"]
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = state["norm.weight"], state["norm.bias"]
        for i in range(cfg.num_layers):
            src, dst = f"layers.{i}.", f"transformer.h.{i}."
            for a, b in [("ln_1", "input_norm"), ("ln_2", "post_attn_norm")]:
                out[f"{dst}{a}.weight"], out[f"{dst}{a}.bias"] = state[f"{src}{b}.weight"], state[f"{src}{b}.bias"]
            for a, b in [("attn.c_attn", "attn.qkv_proj"), ("attn.c_proj", "attn.o_proj"),
                         ("mlp.c_fc", "mlp.up_proj"), ("mlp.c_proj", "mlp.down_proj")]:
                out[f"{dst}{a}.weight"] = state[f"{src}{b}.weight"].t()  # Conv1D stores [in, out]
                out[f"{dst}{a}.bias"] = state[f"{src}{b}.bias"]
        return {k: v.contiguous() for k, v in out.items()}

    out["model.embed_tokens.weight"] = state["embed_tokens.weight"]
    out["model.norm.weight"] = state["norm.weight"]
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(cfg.num_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        out[f"{dst}input_layernorm.weight"] = state[f"{src}input_norm.weight"]
        out[f"{dst}post_attention_layernorm.weight"] = state[f"{src}post_attn_norm.weight"]
        for p in ["weight", "bias"] if cfg.qkv_bias else ["weight"]:
            for name, part in zip("qkv", state[f"{src}attn.qkv_proj.{p}"].split([q, kv, kv]), strict=True):
                out[f"{dst}self_attn.{name}_proj.{p}"] = part
        out[f"{dst}self_attn.o_proj.weight"] = state[f"{src}attn.o_proj.weight"]
        if cfg.o_bias:
            out[f"{dst}self_attn.o_proj.bias"] = state[f"{src}attn.o_proj.bias"]
        if cfg.qk_norm:
            out[f"{dst}self_attn.q_norm.weight"] = state[f"{src}attn.q_norm.weight"]
            out[f"{dst}self_attn.k_norm.weight"] = state[f"{src}attn.k_norm.weight"]
        for p in ["weight", "bias"] if cfg.mlp_bias else ["weight"]:
            gate, up = state[f"{src}mlp.up_proj.{p}"].chunk(2)
            out[f"{dst}mlp.gate_proj.{p}"], out[f"{dst}mlp.up_proj.{p}"] = gate, up
            out[f"{dst}mlp.down_proj.{p}"] = state[f"{src}mlp.down_proj.{p}"]
    return {k: v.contiguous() for k, v in out.items()}


def save_hf_checkpoint(model: torch.nn.Module, hf_config: dict[str, Any], out_dir: str | Path,
                       tokenizer: Any = None, dtype: torch.dtype | None = None) -> Path:
    """Write `model` (a `DecoderLM`) as config.json + model.safetensors (+ tokenizer) under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype or v.dtype) for k, v in model.state_dict().items()
             if not k.startswith("rope.")}
    tensors = to_hf_state_dict(model.config, state)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(hf_config)
    cfg["torch_dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out
