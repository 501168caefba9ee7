"""Shared fixtures: tiny random-weight Hugging Face checkpoints written by `transformers` itself."""

from __future__ import annotations

import json
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


TINY_SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "birds sing at dawn",
                  "the sun is warm and the sky is blue", "rain falls on the green hills ."]


@pytest.fixture(scope="session")
def make_tiny_corpus(tmp_path_factory: pytest.TempPathFactory):
    """Factory: `n_docs` two-sentence documents -> (docs.jsonl, a 300-token tokenizer dir, a prepared data dir)."""
    from llmasos.train.data import prepare_dataset, read_texts
    from llmasos.train.tokenizer import train_tokenizer

    built: dict[int, tuple[Path, Path, Path]] = {}  # read-only once built: test files share it

    def make(n_docs: int) -> tuple[Path, Path, Path]:
        if n_docs in built:
            return built[n_docs]
        root = tmp_path_factory.mktemp("tiny_corpus")
        n = len(TINY_SENTENCES)
        lines = [json.dumps({"text": f"{TINY_SENTENCES[i % n]} . {TINY_SENTENCES[(i * 3) % n]} ."})
                 for i in range(n_docs)]
        (root / "docs.jsonl").write_text("\n".join(lines) + "\n")
        tok = train_tokenizer(read_texts(root / "docs.jsonl"), 300, root / "tok")
        prepare_dataset(read_texts(root / "docs.jsonl"), tok, root / "data", val_fraction=0.1,
                        tokenizer_path=str(root / "tok"))
        built[n_docs] = (root / "docs.jsonl", root / "tok", root / "data")
        return built[n_docs]

    return make


@pytest.fixture(scope="session")
def pretrain_tiny(tmp_path_factory: pytest.TempPathFactory):
    """Factory: a model from an HF-style spec, pre-trained 25 steps on a prepared dir; returns its HF directory."""
    from llmasos.train.config import TrainConfig
    from llmasos.train.pretrain import PretrainSpec, pretrain

    def run(model: dict, data: Path) -> Path:
        out = tmp_path_factory.mktemp("pretrained")
        cfg = TrainConfig(out_dir=str(out), max_steps=25, batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2,
                          eval_interval=25, eval_batches=2, ckpt_interval=25, precision="fp32", num_threads=1)
        pretrain(PretrainSpec(model=model, data=str(data), train=cfg), progress=False)
        return out / "model"

    return run
