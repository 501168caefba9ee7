"""Byte-level BPE tokenizers trained with HF `tokenizers`, saved as `transformers` fast tokenizers.

Byte-level BPE never meets an unknown character (any UTF-8 byte sequence is encodable), which is what a
tokenizer trained on a small corpus needs when users later type text it never saw.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Order fixes the ids: pad = 0, <|im_start|> = 1, eos (<|im_end|>) = 2.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # the byte alphabet plus the specials


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path | None = None,
                    min_frequency: int = 2, show_progress: bool = False):  # noqa: ANN201 - PreTrainedTokenizerFast
    """Train a byte-level BPE with the chat specials and template; save it to `out_dir` when given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < MIN_VOCAB:
        raise ValueError(f"vocab_size must be at least {MIN_VOCAB} (256 bytes + {len(SPECIAL_TOKENS)} specials)")
    seen = 0

    def counted(it: Iterable[str]) -> Iterable[str]:
        nonlocal seen
        for t in it:
            if t:
                seen += 1
                yield t

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
    tok.train_from_iterator(counted(texts), trainer=trainer)
    if seen == 0:
        raise ValueError("cannot train a tokenizer on an empty corpus")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None)
    fast.chat_template = CHAT_TEMPLATE
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast
