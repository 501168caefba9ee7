"""Structured output as token masks, compiled by llguidance (JSON Schema, regex, choice, Lark grammars)."""

from __future__ import annotations

import json
from typing import Any

import torch

from llmasos.kernel.sampling_params import StructuredOutput


class StructuredOutputManager:
    """Owns the llguidance tokenizer view and builds one matcher per constrained sequence."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, eos_token_ids: list[int]) -> None:
        import llguidance.hf

        self.vocab_size = vocab_size
        self.ll_tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size,
                                                         eos_token=eos_token_ids[0] if eos_token_ids else None)

    @staticmethod
    def grammar(spec: StructuredOutput) -> str:
        from llguidance import LLMatcher

        if spec.json is not None:
            schema = json.loads(spec.json) if isinstance(spec.json, str) else spec.json
            return LLMatcher.grammar_from_json_schema(compact_json(schema))
        if spec.json_object:
            return LLMatcher.grammar_from_json_schema(compact_json({"type": "object"}))
        if spec.regex is not None:
            return LLMatcher.grammar_from_regex(spec.regex)
        if spec.choice is not None:
            alts = " | ".join(json.dumps(c) for c in spec.choice)
            return LLMatcher.grammar_from_lark(f"start: {alts}")
        return LLMatcher.grammar_from_lark(spec.grammar)

    def validate(self, spec: StructuredOutput) -> None:
        """Raise ValueError for a grammar that does not compile, before the request is queued."""
        from llguidance import LLMatcher

        try:
            grammar = self.grammar(spec)
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"invalid structured output constraint: {exc}") from exc
        err = LLMatcher.validate_grammar(grammar, self.ll_tokenizer)
        if err:
            raise ValueError(f"invalid structured output constraint: {err}")

    def matcher(self, spec: StructuredOutput) -> Any:
        from llguidance import LLMatcher

        return LLMatcher(self.ll_tokenizer, self.grammar(spec))

    def masks(self, matchers: list[Any], vocab_size: int, device: torch.device) -> torch.Tensor | None:
        """Boolean allow-masks `[B, vocab]` for the rows that have a matcher (others allow everything)."""
        if not any(m is not None for m in matchers):
            return None
        import llguidance.torch as llt

        bitmask = llt.allocate_token_bitmask(len(matchers), self.vocab_size)
        for i, m in enumerate(matchers):
            if m is None:
                bitmask[i].fill_(-1)
            else:
                llt.fill_next_token_bitmask(m, bitmask, i)
        bits = torch.arange(32, dtype=torch.int32)
        allowed = ((bitmask[:, :, None] >> bits) & 1).bool().reshape(len(matchers), -1)
        out = torch.zeros(len(matchers), vocab_size, dtype=torch.bool)
        n = min(vocab_size, allowed.shape[1], self.vocab_size)
        out[:, :n] = allowed[:, :n]
        return out.to(device)


def compact_json(schema: dict) -> dict:
    """Single-line JSON unless the schema sets its own `x-guidance`: with free whitespace a small model can emit
    newlines inside an object until max_tokens cuts it, and the output no longer parses."""
    if not isinstance(schema, dict) or "x-guidance" in schema:
        return schema
    return {**schema, "x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}}
