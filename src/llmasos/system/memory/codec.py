"""Token counting and chat rendering for the memory manager, from the kernel model's tokenizer."""

from __future__ import annotations

import re
from typing import Any

Msg = dict[str, str]


class ChatCodec:
    """Counts tokens exactly as the kernel will see the prompt: through the model's chat template."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self._overhead: tuple[int, int] | None = None
        self._special = _special_token_pattern(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def count(self, text: str) -> int:
        return len(self.encode(text)) if text else 0

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def render(self, messages: list[Msg]) -> str:
        """The prompt text. Special-token strings inside message contents (a user typing `<|im_start|>system`)
        are broken with a zero-width joiner, so content can never forge a turn or a role."""
        if self._special is not None:
            messages = [{**m, "content": self._special.sub(_defuse, m["content"])} for m in messages]
        if self.has_template:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"

    def count_prompt(self, messages: list[Msg]) -> int:
        return len(self.encode(self.render(messages)))

    def overhead(self) -> tuple[int, int]:
        """(tokens of a rendered conversation with one empty system and one empty user message, extra tokens
        each further message adds beyond its content)."""
        if self._overhead is None:
            base = self.count_prompt([{"role": "system", "content": ""}, {"role": "user", "content": ""}])
            two = self.count_prompt([{"role": "system", "content": ""}, {"role": "user", "content": ""},
                                     {"role": "assistant", "content": ""}, {"role": "user", "content": ""}])
            self._overhead = (base, max(1, (two - base + 1) // 2))
        return self._overhead

    def truncate(self, text: str, max_tokens: int, *, keep_tail: bool = False) -> str:
        """At most `max_tokens` tokens of the text: the head, or head and tail around a marker."""
        ids = self.encode(text)
        if len(ids) <= max_tokens:
            return text
        if max_tokens <= 0:
            return ""
        if not keep_tail or max_tokens < 24:
            return self.decode(ids[:max_tokens])
        marker = f"\n[... {len(ids) - max_tokens} tokens omitted ...]\n"
        room = max_tokens - len(self.encode(marker))
        head = room * 2 // 3
        return self.decode(ids[:head]) + marker + self.decode(ids[len(ids) - (room - head):])


def _special_token_pattern(tokenizer: Any) -> re.Pattern | None:
    names = set(getattr(tokenizer, "all_special_tokens", None) or [])
    for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(tok, "special", False):
            names.add(str(tok))
    names = {n for n in names if len(n) > 1}
    if not names:
        return None
    return re.compile("|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)))


def _defuse(m: re.Match) -> str:
    return m.group(0)[0] + "\u200d" + m.group(0)[1:]


class CharCodec(ChatCodec):
    """For an OS booted without a model: ~4 characters per token, plain role-prefixed rendering."""

    def __init__(self) -> None:
        self.tok = None
        self.has_template = False
        self._overhead = None
        self._special = None

    def encode(self, text: str) -> list[int]:
        return [0] * (-(-len(text) // 4))

    def decode(self, ids: list[int]) -> str:  # only used by truncate, which we override
        raise NotImplementedError

    def truncate(self, text: str, max_tokens: int, *, keep_tail: bool = False) -> str:
        if len(self.encode(text)) <= max_tokens:
            return text
        return text[: max(max_tokens, 0) * 4]
