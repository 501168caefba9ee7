"""Write a Hugging Face checkpoint (Llama / Mistral / Qwen2 / Qwen3) as a GGUF file, quantized by the `gguf`
package's own quantizers, so that llama.cpp, Ollama and our loader run the very same weights.

Used by the parity tests (files written here are read by transformers' GGUF loader as the reference) and by
the benchmarks (llama.cpp and our kernels on one file). Names, layouts and metadata follow llama.cpp's
`convert_hf_to_gguf.py`: Llama files store q/k rows with each head's rotary halves interleaved.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFWriter, quants
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from llmasos.models.config import ModelConfig

Q = GGMLQuantizationType
# What the gguf package can quantize to (it raises NotImplementedError for the K-quants).
WRITABLE_TYPES = {t.name: t for t in (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1)}
_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
_FILE_TYPE = {Q.F32: 0, Q.F16: 1, Q.Q4_0: 2, Q.Q4_1: 3, Q.Q8_0: 7, Q.Q5_0: 8, Q.Q5_1: 9, Q.BF16: 32}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """HF's half-split rotary rows -> llama.cpp's interleaved pairs (its LlamaModel.permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model_dir: str | Path, out_path: str | Path, qtype: str = "Q8_0", name: str | None = None) -> Path:
    """Convert the HF checkpoint in `model_dir` (with its tokenizer.json) to `out_path`.

    Matrices are stored as `qtype` where their rows split into whole blocks (else F16); norms and biases as F32.
    """
    from llmasos.models.loader import iter_checkpoint_tensors, read_hf_config

    if qtype not in WRITABLE_TYPES:
        raise ValueError(f"cannot write {qtype!r}; choose one of {', '.join(WRITABLE_TYPES)}")
    target = WRITABLE_TYPES[qtype]
    model_dir, out = Path(model_dir), Path(out_path)
    hf = read_hf_config(model_dir)
    arch = _ARCH.get(hf.get("model_type", ""))
    if arch is None:
        raise ValueError(f"cannot write model_type {hf.get('model_type')!r} as GGUF; supported: {', '.join(_ARCH)}")
    cfg = ModelConfig.from_hf(hf)
    w = GGUFWriter(str(out), arch)
    w.add_name(name or model_dir.name)
    w.add_file_type(_FILE_TYPE[target])
    w.add_context_length(cfg.max_position)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    if arch == "qwen3" or cfg.head_dim != cfg.hidden_size // cfg.num_heads:
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    if cfg.rope_scaling:
        raise ValueError("rope scaling is not written by this converter")
    _add_tokenizer(w, model_dir, cfg)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for key, tensor in iter_checkpoint_tensors(model_dir):
        if key == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if key in names:
            gname = names[key]
        else:
            parts = key.split(".")  # model.layers.N.<module path>.<weight|bias>
            gname = f"blk.{parts[2]}.{layer['.'.join(parts[3:-1])]}.{parts[-1]}"
        data = tensor.to(torch.float32).numpy()
        if arch == "llama" and (".attn_q." in gname or ".attn_k." in gname):
            data = _permute(data, cfg.num_heads if ".attn_q." in gname else cfg.num_kv_heads)
        _add(w, gname, data, target)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def _add(w: GGUFWriter, name: str, data: np.ndarray, target: GGMLQuantizationType) -> None:
    qtype = target if data.ndim == 2 else Q.F32
    if qtype not in (Q.F32, Q.F16, Q.BF16) and data.shape[-1] % GGML_QUANT_SIZES[qtype][0]:
        qtype = Q.F16
    if qtype == Q.F32:
        w.add_tensor(name, data.astype(np.float32))
    elif qtype == Q.F16:
        w.add_tensor(name, data.astype(np.float16))
    else:
        w.add_tensor(name, quants.quantize(data.astype(np.float32), qtype), raw_dtype=qtype)


def _add_tokenizer(w: GGUFWriter, model_dir: Path, cfg: ModelConfig) -> None:
    """A byte-level BPE `tokenizer.json` as llama.cpp's `gpt2` vocabulary (a placeholder vocabulary of distinct
    tokens where the checkpoint has no tokenizer, e.g. the benchmarks' models, which are fed token ids)."""
    if not (model_dir / "tokenizer.json").is_file():
        # SentencePiece-style: llama.cpp wants merges for a byte-level vocabulary and byte tokens for this one.
        tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
        tokens += [f"<t{i}>" for i in range(len(tokens), cfg.vocab_size)]
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens[: cfg.vocab_size])
        w.add_token_types(([2, 3, 3] + [6] * 256 + [1] * cfg.vocab_size)[: cfg.vocab_size])
        w.add_token_scores([0.0] * cfg.vocab_size)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(False)
        return
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    if spec["model"]["type"] != "BPE":
        raise ValueError("only byte-level BPE tokenizers are written")
    vocab: dict[str, int] = dict(spec["model"]["vocab"])
    special = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    vocab.update(special)
    tokens = [f"[PAD{i}]" for i in range(cfg.vocab_size)]
    types = [5] * cfg.vocab_size  # UNUSED until filled
    for tok, i in vocab.items():
        if i < cfg.vocab_size:
            tokens[i] = tok
            types[i] = 3 if tok in special else 1  # CONTROL / NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    tcfg = json.loads((model_dir / "tokenizer_config.json").read_text()) \
        if (model_dir / "tokenizer_config.json").is_file() else {}
    for key, add in (("bos_token", w.add_bos_token_id), ("eos_token", w.add_eos_token_id),
                     ("pad_token", w.add_pad_token_id)):
        tok = tcfg.get(key)
        tok = tok.get("content") if isinstance(tok, dict) else tok
        if tok in vocab:
            add(vocab[tok])
    w.add_add_bos_token(False)
    template = tcfg.get("chat_template")
    if template is None and (model_dir / "chat_template.jinja").is_file():
        template = (model_dir / "chat_template.jinja").read_text()
    if template:
        w.add_chat_template(template)
