"""The model used when none is named.

Until the project's own trained model ships (toolchain issue), the default is a small random-weight Llama
built on first use in the user's cache directory: it exercises the whole stack offline, but its replies are
noise. Name any Hugging Face directory or hub id to get a real model.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_NAME = "llmasos-tiny-random"


def cache_dir() -> Path:
    base = os.environ.get("LLMASOS_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "llmasos")
    return Path(base)


def default_model_dir() -> Path:
    path = cache_dir() / "models" / DEFAULT_MODEL_NAME
    if not (path / "config.json").is_file():
        from llmasos.models.random_checkpoint import build_random_checkpoint

        tmp = path.with_name(path.name + ".tmp")
        build_random_checkpoint(tmp, "llama", "small", vocab_size=512, max_position_embeddings=2048)
        tmp.rename(path)  # atomic: a killed build never leaves a half-written default
    return path
