"""A sequence is the kernel's process: its tokens, its KV blocks, its scheduling attributes and its state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from llmasos.kernel.sampling_params import SamplingParams


class SequenceStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)  # identity semantics: two sequences are never "equal", and lookups stay O(1) per item
class Sequence:
    seq_id: int
    request_id: str
    index: int  # which of the request's n completions
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    app_id: str = "default"
    priority: int = 0  # lower runs first, like Unix nice
    weight: float = 1.0  # the app's share when apps compete
    arrival_time: float = field(default_factory=time.monotonic)
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    num_cached_prompt_tokens: int = 0  # of those, how many came from the prefix cache
    num_preemptions: int = 0
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    generator: torch.Generator | None = None
    matcher: Any = None  # structured-output matcher, when constrained
    logprobs: list[dict[int, float]] = field(default_factory=list)
    cumulative_logprob: float = 0.0
    # Incremental detokenisation state.
    text: str = ""
    prefix_offset: int = 0
    read_offset: int = 0
    emitted_text_len: int = 0  # text already streamed to the caller
    emitted_tokens: int = 0
    adapter: str | None = None  # adapter served to this sequence (None: the base model)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def waiting_time(self, now: float) -> float:
        return now - self.arrival_time
