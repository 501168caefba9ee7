"""Per-request generation controls, validated at the boundary so the engine never sees a bad value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class StructuredOutput:
    """Exactly one constraint: a JSON Schema (dict or JSON text), `json_object` for any JSON, a regex,
    a list of choices, or a Lark grammar."""

    json: dict[str, Any] | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("json", "regex", "choice", "grammar") if getattr(self, k) is not None]
        given += ["json_object"] if self.json_object else []
        if len(given) != 1:
            raise ValueError(f"structured output needs exactly one of json, json_object, regex, choice, grammar; got {given or 'none'}")
        if self.choice is not None and (not self.choice or not all(isinstance(c, str) and c for c in self.choice)):
            raise ValueError("choice must be a non-empty list of non-empty strings")


@dataclass
class SamplingParams:
    n: int = 1
    max_tokens: int | None = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    logit_bias: dict[int, float] | None = None
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None  # top-N logprobs per generated token (the sampled one is always included)
    skip_special_tokens: bool = True
    structured: StructuredOutput | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0
        if _is_num(self.temperature) and 0 < self.temperature < GREEDY_BELOW:
            # Dividing logits by ~0 overflows float32: such a temperature means greedy (as vLLM treats it).
            self.temperature = 0.0
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        need(isinstance(self.n, int) and self.n >= 1, f"n must be an integer >= 1, got {self.n!r}")
        need(self.max_tokens is None or (isinstance(self.max_tokens, int) and self.max_tokens >= 1),
             f"max_tokens must be an integer >= 1 or None, got {self.max_tokens!r}")
        need(isinstance(self.min_tokens, int) and self.min_tokens >= 0, f"min_tokens must be >= 0, got {self.min_tokens!r}")
        need(self.max_tokens is None or self.min_tokens <= self.max_tokens, "min_tokens must not exceed max_tokens")
        need(_is_num(self.temperature) and self.temperature >= 0, f"temperature must be >= 0, got {self.temperature!r}")
        need(isinstance(self.top_k, int) and self.top_k >= 0, f"top_k must be -1, 0 or a positive integer, got {self.top_k!r}")
        need(_is_num(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}")
        need(_is_num(self.min_p) and 0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p!r}")
        need(_is_num(self.temperature) and self.temperature <= MAX_TEMPERATURE,
             f"temperature must be at most {MAX_TEMPERATURE}, got {self.temperature!r}")
        need(_is_num(self.repetition_penalty) and 1e-3 <= self.repetition_penalty <= 1e3,
             f"repetition_penalty must be in [0.001, 1000], got {self.repetition_penalty!r}")
        need(_is_num(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2,
             f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty!r}")
        need(_is_num(self.presence_penalty) and -2 <= self.presence_penalty <= 2,
             f"presence_penalty must be in [-2, 2], got {self.presence_penalty!r}")
        need(isinstance(self.no_repeat_ngram_size, int) and self.no_repeat_ngram_size >= 0,
             f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size!r}")
        for s in self.stop:
            need(isinstance(s, str) and s != "", f"stop must be non-empty strings, got {s!r}")
        for t in self.stop_token_ids:
            need(isinstance(t, int) and not isinstance(t, bool) and t >= 0, f"stop_token_ids must be token ids, got {t!r}")
        need(self.seed is None or isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}")
        need(self.logprobs is None or (isinstance(self.logprobs, int) and 0 <= self.logprobs <= 20),
             f"logprobs must be an integer in [0, 20], got {self.logprobs!r}")
        if self.logit_bias is not None:
            for k, v in self.logit_bias.items():
                need(isinstance(k, int) and _is_num(v) and -MAX_BIAS <= v <= MAX_BIAS,
                     f"logit_bias must map token ids to numbers in [-{MAX_BIAS:g}, {MAX_BIAS:g}], got {k!r}: {v!r}")
        need(self.structured is None or isinstance(self.structured, StructuredOutput),
             "structured must be a StructuredOutput")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY_BELOW = 1e-5  # temperatures under this sample greedily
MAX_TEMPERATURE = 1e4
MAX_BIAS = 1e4  # beyond float32's comfort a bias overflows; +-100 already forces or bans a token


def _is_num(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x == x  # rejects NaN
