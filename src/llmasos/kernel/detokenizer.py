"""Incremental detokenisation: decode only a short window per new token, and never emit half a character."""

from __future__ import annotations

from typing import Any

from llmasos.kernel.sequence import Sequence

_CONTEXT = 5  # prompt tokens decoded with the output, so word-initial spaces come out right


def init_offsets(seq: Sequence) -> None:
    seq.read_offset = seq.num_prompt_tokens
    seq.prefix_offset = max(0, seq.num_prompt_tokens - _CONTEXT)


def detokenize_step(tokenizer: Any, seq: Sequence) -> str:
    """Append the text of the newest tokens to `seq.text`; returns the new text."""
    skip = seq.params.skip_special_tokens
    ids = seq.token_ids
    prefix = tokenizer.decode(ids[seq.prefix_offset : seq.read_offset], skip_special_tokens=skip)
    full = tokenizer.decode(ids[seq.prefix_offset :], skip_special_tokens=skip)
    # A trailing U+FFFD means a multi-byte character is still incomplete: wait for the next token.
    if len(full) > len(prefix) and not full.endswith("\ufffd"):
        new = full[len(prefix) :]
        seq.prefix_offset, seq.read_offset = seq.read_offset, len(ids)
        seq.text += new
        return new
    return ""
