"""Engine configuration as plain data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    model: str | None = None  # HF directory or hub name; None = the built-in default model
    dtype: str = "auto"  # auto (bf16), float32, bfloat16, float16
    device: str = "cpu"
    max_model_len: int | None = None  # defaults to the model's max_position_embeddings
    block_size: int = 16
    kv_cache_memory: int | None = None  # bytes for the KV block pool; None = automatic
    enable_prefix_caching: bool = True
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 1024
    aging_seconds: float = 10.0
    latency_budget: int = 64  # prompt tokens per step for less urgent apps while a more urgent one is active
    latency_window: float = 5.0  # seconds an app counts as active after its last request
    num_threads: int | None = None  # torch intra-op threads on CPU; None = torch's default (all cores)
    # A oneDNN-blocked second copy of each bf16 CPU weight for batched steps (15-40% faster at batch 8-64);
    # None = only if the copy takes at most a quarter of the available RAM.
    prepack_weights: bool | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError("num_threads must be >= 1")
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ValueError("kv_cache_memory must be a positive number of bytes")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError("max_model_len must be >= 2")
