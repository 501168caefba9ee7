"""Shared fixtures: tiny random-weight Hugging Face checkpoints written by `transformers` itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from llmasos.models.random_checkpoint import build_random_checkpoint  # noqa: E402

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gpt2"]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny checkpoint per family, plus a Llama 3 RoPE-scaled and a tied-embedding variant."""
    root = tmp_path_factory.mktemp("ckpt")
    out = {fam: build_random_checkpoint(root / fam, fam, seed=i) for i, fam in enumerate(FAMILIES)}
    out["llama3-rope"] = build_random_checkpoint(
        root / "llama3-rope", "llama", seed=7, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 32},
    )
    return out


@pytest.fixture(scope="session")
def llama_dir(checkpoints: dict[str, Path]) -> Path:
    return checkpoints["llama"]


@pytest.fixture(scope="session")
def llm(llama_dir: Path):
    """A float32 engine on the tiny Llama with a small KV pool (block size 4) to exercise paging."""
    from llmasos import LLM

    torch.manual_seed(0)
    return LLM(llama_dir, dtype="float32", block_size=4, kv_cache_memory=2 << 20, max_num_batched_tokens=64)
