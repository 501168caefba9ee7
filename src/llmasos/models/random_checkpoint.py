"""Random-weight Hugging Face checkpoints built offline, for tests, benchmarks and the interim default model.

They are written by `transformers` itself (config + safetensors) with a byte-level BPE tokenizer trained on the
spot, so loading them exercises exactly the path a real downloaded checkpoint takes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from llmasos.models.hf_format import make_hf_config

# Presets: name -> (family kwargs). "bench" is the 0.42B Llama-shaped model of the benchmark brief.
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4),
    "bench": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8),
}

_CORPUS = (
    "LLMasOS treats the language model as the CPU of an operating system. Apps are processes; the KV cache "
    "is virtual memory; the scheduler shares the model between apps by priority and weight. "
    "Hello, how can I help you today? Thanks for asking. The quick brown fox jumps over the lazy dog. "
    "0123456789 {}[]():;,.!?\"'-_/\\ JSON schema regex choice yes no true false null "
)


def build_tokenizer(out_dir: str | Path, vocab_size: int = 512) -> None:
    """Train a small byte-level BPE tokenizer on a fixed corpus and save it with the chat template."""
    from llmasos.train.tokenizer import train_tokenizer

    train_tokenizer([_CORPUS] * 20, vocab_size, out_dir, min_frequency=1)


def build_random_checkpoint(out_dir: str | Path, family: str = "llama", preset: str = "tiny",
                            vocab_size: int = 512, seed: int = 0, dtype: torch.dtype = torch.float32,
                            with_tokenizer: bool = True, **overrides) -> Path:
    """Write a random-weight checkpoint of `family` (llama, mistral, qwen2, qwen3, gpt2) to `out_dir`."""
    import transformers as tf

    tf.utils.logging.disable_progress_bar()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = {**PRESETS[preset], **overrides}
    if with_tokenizer:
        build_tokenizer(out, vocab_size)
        from transformers import AutoTokenizer

        vocab_size = max(vocab_size, len(AutoTokenizer.from_pretrained(str(out))))
    hf = make_hf_config(family, vocab_size, eos_token_id=2, pad_token_id=0, **p)  # eos = <|im_end|>
    cls = getattr(tf, hf["architectures"][0])
    cfg = tf.AutoConfig.for_model(**hf)
    torch.manual_seed(seed)
    model = cls(cfg).to(dtype)
    model.save_pretrained(str(out))
    return out
