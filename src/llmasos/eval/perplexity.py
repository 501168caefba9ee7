"""Perplexity of a causal LM over token sequences, with a sliding window for texts longer than the context.

The window scheme is the one of Hugging Face's "Perplexity of fixed-length models" guide: windows of
`max_length` tokens start every `stride` tokens, and each window scores only the tokens no earlier window
scored, so every token is scored exactly once with `max_length - stride` or more tokens of left context.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# Most logits one batch may hold (elements): long windows on a large vocabulary shrink the batch instead of
# exhausting memory (2**27 fp32 logits = 512 MiB).
_LOGITS_BUDGET = 1 << 27


@dataclass
class PerplexityResult:
    corpus_ppl: float  # exp(total NLL / total predicted tokens)
    mean_ppl: float  # mean over texts of each text's own perplexity
    nll: float  # total NLL in nats
    num_tokens: int  # predicted tokens
    num_texts: int  # texts scored
    num_skipped: int = 0  # texts with fewer than 2 tokens: nothing to predict


@dataclass
class _Window:
    text: int  # index of the text it belongs to
    inputs: torch.Tensor  # ids fed to the model, [T]
    targets: torch.Tensor  # ids it scores
    first: int  # position in `inputs` whose logits predict targets[0]


def windows(n: int, max_length: int, stride: int) -> list[tuple[int, int, int, int]]:
    """`(begin, end, lo, hi)` for a text of `n` tokens: feed ids[begin:end], score tokens lo..hi-1.

    Token 0 has no left context and is never scored. With stride == max_length the windows are disjoint and a
    window cannot predict its own first token, so the previous window's last position predicts it instead
    (HF's loop skips that token).
    """
    out = []
    begin, prev_hi = 0, 1
    while True:
        end = min(begin + max_length, n)
        hi = end + 1 if end < n and stride == max_length else end
        lo = max(prev_hi, begin + 1)
        if hi > lo:
            out.append((begin, end, lo, hi))
        prev_hi = max(prev_hi, hi)
        if end >= n:
            return out
        begin += stride


def _exp(x: float) -> float:
    return math.exp(x) if x < 709.0 else math.inf


def perplexity(model: torch.nn.Module, token_lists: Sequence[Sequence[int]], max_length: int | None = None,
               stride: int | None = None, batch_size: int = 8) -> PerplexityResult:
    """Perplexity of `model` (dense `model(ids[B, T]) -> logits[B, T, V]`) on already tokenized texts.

    `max_length` defaults to the model's context (`model.config.max_position`), `stride` to half of it.
    Texts with fewer than 2 tokens are skipped and counted in `num_skipped`.
    """
    cfg = getattr(model, "config", None)
    context = getattr(cfg, "max_position", None)
    vocab = getattr(cfg, "vocab_size", None)
    if max_length is None:
        if context is None:
            raise ValueError("max_length is required: the model has no config.max_position")
        max_length = context
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if context is not None and max_length > context:
        raise ValueError(f"max_length {max_length} exceeds the model's context of {context} positions")
    if stride is None:
        stride = max(1, max_length // 2)
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be between 1 and max_length ({max_length}), got {stride}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(token_lists) == 0:
        raise ValueError("no texts to score")

    device = next(model.parameters()).device
    items: list[_Window] = []
    for i, ids in enumerate(token_lists):
        t = torch.as_tensor(list(ids), dtype=torch.long)
        if t.numel() and (int(t.min()) < 0 or (vocab is not None and int(t.max()) >= vocab)):
            raise ValueError(f"text {i}: token ids must lie in [0, {vocab}), got {int(t.min())}..{int(t.max())}")
        for begin, end, lo, hi in windows(t.numel(), max_length, stride):
            items.append(_Window(i, t[begin:end], t[lo:hi], lo - 1 - begin))
    if not items:
        raise ValueError(f"none of the {len(token_lists)} texts has 2 or more tokens: nothing to score")

    nll = [0.0] * len(token_lists)
    count = [0] * len(token_lists)
    # Longest first so each batch holds windows of similar length and padding stays small.
    items.sort(key=lambda w: -w.inputs.numel())
    with torch.inference_mode():
        start = 0
        while start < len(items):
            width = items[start].inputs.numel()
            rows = max(1, min(batch_size, _LOGITS_BUDGET // (width * (vocab or 1))))
            batch = items[start : start + rows]
            start += len(batch)
            # Right padding: causal attention keeps real tokens from seeing the pad tokens after them.
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            for r, w in enumerate(batch):
                ids[r, : w.inputs.numel()] = w.inputs
            logits = model(ids.to(device))
            for r, w in enumerate(batch):
                n = w.targets.numel()
                rows_logits = logits[r, w.first : w.first + n].float()  # log-softmax in fp32 whatever the model dtype
                loss = F.cross_entropy(rows_logits, w.targets.to(device), reduction="sum")
                nll[w.text] += float(loss)
                count[w.text] += n
            del logits

    scored = [i for i, c in enumerate(count) if c]
    total_nll = sum(nll[i] for i in scored)
    total = sum(count[i] for i in scored)
    return PerplexityResult(
        corpus_ppl=_exp(total_nll / total),
        mean_ppl=sum(_exp(nll[i] / count[i]) for i in scored) / len(scored),
        nll=total_nll,
        num_tokens=total,
        num_texts=len(scored),
        num_skipped=len(token_lists) - len(scored),
    )


def text_perplexity(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], add_special_tokens: bool = True,
                    **kw: Any) -> PerplexityResult:
    """Tokenize `texts` (with the tokenizer's special tokens, e.g. BOS, unless told otherwise) and score them."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    if len(texts) == 0:
        raise ValueError("no texts to score")
    token_lists = tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
    return perplexity(model, token_lists, **kw)
