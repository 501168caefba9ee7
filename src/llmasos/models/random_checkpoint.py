"""Random-weight Hugging Face checkpoints built offline, for tests, benchmarks and the interim default model.

They are written by `transformers` itself (config + safetensors) with a byte-level BPE tokenizer trained on the
spot, so loading them exercises exactly the path a real downloaded checkpoint takes.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

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
    """Train a small byte-level BPE tokenizer and save it as a `PreTrainedTokenizerFast` with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_CORPUS] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))


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
    eos = 2  # <|im_end|> in the trained tokenizer
    common = dict(vocab_size=vocab_size, bos_token_id=None, eos_token_id=eos, pad_token_id=0)
    if family == "gpt2":
        cfg = tf.GPT2Config(n_embd=p["hidden_size"], n_inner=p["intermediate_size"], n_layer=p["num_hidden_layers"],
                            n_head=p["num_attention_heads"], n_positions=p.get("max_position_embeddings", 512),
                            **common)
        cls = tf.GPT2LMHeadModel
    else:
        kw = dict(p, max_position_embeddings=p.get("max_position_embeddings", 2048), **common)
        cfg_cls, cls = {
            "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
            "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
            "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
            "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
        }[family]
        cfg = cfg_cls(**kw)
    torch.manual_seed(seed)
    model = cls(cfg).to(dtype)
    model.save_pretrained(str(out))
    return out
