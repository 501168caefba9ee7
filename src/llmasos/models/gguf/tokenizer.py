"""The tokenizer a GGUF file describes in its metadata, built as a `tokenizers` / Hugging Face fast tokenizer.

A GGUF has no `tokenizer.json`: it stores the vocabulary, merges (or SentencePiece scores), token types, special
ids and the chat template under llama.cpp's `tokenizer.*` keys. Two vocabulary kinds cover the supported
architectures:

- `gpt2`: byte-level BPE (Llama 3, Qwen2/3, SmolLM). How text is split before the merges depends on the
  model (`tokenizer.ggml.pre`): each split below is the one the model's own `tokenizer.json` uses.
- `llama`: SentencePiece BPE with byte fallback (Llama 2, TinyLlama, Mistral). The files usually carry
  scores instead of merges; the merges are recovered from them, best score first.
"""

from __future__ import annotations

from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

# llama.cpp token types
CONTROL, USER_DEFINED = 3, 4

_GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_LLAMA3_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
                 r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
_QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
                r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
# tokenizer.ggml.pre -> the split regex applied before the byte-level merges
PRE_SPLITS = {
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}
# Split into single digits first, then GPT-2's byte-level split (the StarCoder-family tokenizers).
DIGIT_SPLIT_PRES = {"smollm", "starcoder", "refact"}
LLAMA3_LIKE = {"llama3", "llama-v3", "llama-bpe", "smaug-bpe"}  # their BPE ignores merges for whole-word tokens


def build_tokenizer(meta: dict[str, Any]) -> Any:
    """A `transformers.PreTrainedTokenizerFast` from a GGUF file's metadata (`tokenizer.*` keys)."""
    from transformers import PreTrainedTokenizerFast

    kind = meta.get("tokenizer.ggml.model")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if kind == "gpt2":
        tok = _byte_level(tokens, meta.get("tokenizer.ggml.merges") or [], meta.get("tokenizer.ggml.pre", "default"))
        add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    elif kind == "llama":
        tok = _sentencepiece(tokens, meta.get("tokenizer.ggml.scores"), meta.get("tokenizer.ggml.merges"),
                             meta.get("tokenizer.ggml.unknown_token_id"),
                             bool(meta.get("tokenizer.ggml.add_space_prefix", True)))
        # llama.cpp adds BOS to SentencePiece vocabularies unless the file says otherwise.
        add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", True))
    else:
        raise ValueError(f"GGUF tokenizer model {kind!r} is not supported; supported: gpt2 (byte-level BPE), "
                         "llama (SentencePiece BPE)")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types, strict=True) if ty == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types, strict=True) if ty == USER_DEFINED])

    def token(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}")
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    bos = token("bos_token_id")
    if add_bos and bos is not None:
        bos_id = tokens.index(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=token("eos_token_id"),
                                   unk_token=token("unknown_token_id"), pad_token=token("padding_token_id"),
                                   chat_template=meta.get("tokenizer.chat_template"),
                                   clean_up_tokenization_spaces=False)
    fast.add_bos_token = add_bos
    return fast


def _byte_level(tokens: list[str], merges: list[str], pre: str) -> Tokenizer:
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False,
                               ignore_merges=pre in LLAMA3_LIKE))
    if pre in PRE_SPLITS:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRE_SPLITS[pre]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    elif pre in DIGIT_SPLIT_PRES:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    else:  # "default", "gpt2" and anything unknown: GPT-2's own split
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _sentencepiece(tokens: list[str], scores: list[float] | None, merges: list[str] | None, unk_id: int | None,
                   add_space_prefix: bool) -> Tokenizer:
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges] if merges else merges_from_scores(tokens, scores)
    unk = tokens[unk_id] if unk_id is not None else None
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, unk_token=unk, fuse_unk=True, byte_fallback=True))
    steps = [normalizers.Prepend("\u2581")] if add_space_prefix else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([
        decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
        *([decoders.Strip(" ", 1, 0)] if add_space_prefix else []),
    ])
    return tok


def merges_from_scores(tokens: list[str], scores: list[float] | None) -> list[tuple[str, str]]:
    """SentencePiece BPE merges implied by a vocabulary: every split of a token into two vocabulary pieces,
    ordered by the merged token's score (best first), as sentencepiece applies them."""
    vocab = {t: i for i, t in enumerate(tokens)}
    score = scores if scores is not None else [-float(i) for i in range(len(tokens))]
    found: list[tuple[float, int, int, str, str]] = []
    for t, i in vocab.items():
        for cut in range(1, len(t)):
            left, right = t[:cut], t[cut:]
            if left in vocab and right in vocab:
                found.append((-score[i], vocab[left], vocab[right], left, right))
    found.sort()
    return [(left, right) for *_, left, right in found]
