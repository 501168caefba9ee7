"""Hybrid retrieval: BM25 (bm25s, stemmed words) and embeddings (all-MiniLM-L6-v2), grouped per document (one
hit
per document: its best chunk) and fused: a weighted sum of the two z-scored document scores (the weight chosen
on
the dev questions), or reciprocal rank fusion."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

BM25_WEIGHT = 0.2  # z-score fusion: the BM25 weight next to the embeddings' 1.0, chosen on data/dev.jsonl
WEIGHT_GRID = (0.1, 0.2, 0.3, 0.5)  # the weights the evaluation tries on the dev questions
RRF_K = 60  # reciprocal rank fusion constant (the usual value), for fusion="rrf"
MODES = ("hybrid", "bm25", "dense", "rrf")  # rrf: the hybrid fused by reciprocal rank fusion instead
_TOKEN = re.compile(r"[A-Za-z]+|\d+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


@cache
def _stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer("english")


@cache
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    extra = {
        "how",
        "what",
        "which",
        "do",
        "does",
        "i",
        "can",
        "my",
        "me",
        "you",
        "your",
        "get",
        "want",
        "way",
        "there",
        "something",
        "from",
        "using",
        "use",
        "python",
        "function",
    }
    return frozenset(STOPWORDS_EN) | extra


def tokenize(text: str) -> list[str]:
    """Lower-cased, stemmed word tokens without stop words; identifiers are split (`insort_left` -> insort,
    left;
    `DictWriter` -> dict, writer)."""
    words = _TOKEN.findall(_CAMEL.sub(" ", text))
    stop = _stopwords()
    kept = [w.lower() for w in words if w.lower() not in stop and (len(w) > 1 or w.isdigit())]
    return _stemmer().stemWords(kept)


@dataclass
class Hit:
    """One document found: its id, the fused score, its best chunk's text, and the signals behind them."""

    doc_id: str
    score: float
    text: str
    chunk: int = 0
    metadata: dict = field(default_factory=dict)
    bm25: float = 0.0  # the best chunk's BM25 score (0 when no query word occurs)
    similarity: float = 0.0  # the best chunk's cosine similarity to the query
    bm25_rank: int | None = None
    dense_rank: int | None = None

    def to_dict(self) -> dict:
        return {
            "doc_id": self.doc_id,
            "score": round(self.score, 6),
            "text": self.text,
            "chunk": self.chunk,
            "metadata": self.metadata,
            "bm25": round(self.bm25, 4),
            "similarity": round(self.similarity, 4),
            "bm25_rank": self.bm25_rank,
            "dense_rank": self.dense_rank,
        }


class Bm25Index:
    """BM25 over chunks, rebuilt when chunks change (bm25s indexes are immutable, and building is fast)."""

    def __init__(self) -> None:
        self._retriever: Any = None
        self._n = 0

    def build(self, texts: list[str]) -> None:
        import bm25s

        self._n = len(texts)
        if not texts:
            self._retriever = None
            return
        tokens = [tokenize(t) or ["_empty_"] for t in texts]
        self._retriever = bm25s.BM25()
        self._retriever.index(tokens, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        q = tokenize(query)
        if self._retriever is None or not q:
            return np.zeros(self._n, dtype=np.float32)
        vocab = self._retriever.vocab_dict
        q = [t for t in q if t in vocab]
        if not q:
            return np.zeros(self._n, dtype=np.float32)
        return np.asarray(self._retriever.get_scores(q), dtype=np.float32)


def per_document(keys: list[tuple[str, int]], scores: dict[int, float]) -> dict[str, tuple[float, int]]:
    """{doc_id: (best score, index of the best chunk)} from chunk scores (chunk index -> score)."""
    out: dict[str, tuple[float, int]] = {}
    for i, s in scores.items():
        doc = keys[i][0]
        if doc not in out or s > out[doc][0]:
            out[doc] = (s, i)
    return out


def ranks(doc_scores: dict[str, tuple[float, int]], positive_only: bool = False) -> dict[str, int]:
    items = [(d, s) for d, (s, _) in doc_scores.items() if not positive_only or s > 0]
    items.sort(key=lambda x: (-x[1], x[0]))
    return {d: r for r, (d, _) in enumerate(items, start=1)}


def _z(values: dict[str, float], docs: set[str], missing: float) -> dict[str, float]:
    v = np.array([values.get(d, missing) for d in docs], dtype=np.float64)
    mu, sd = float(v.mean()), float(v.std()) or 1.0
    return {d: (values.get(d, missing) - mu) / sd for d in docs}


def fuse(
    keys: list[tuple[str, int]],
    bm25: dict[int, float],
    dense: dict[int, float],
    mode: str = "hybrid",
    weight: float = BM25_WEIGHT,
    fusion: str = "z",
    rrf_k: int = RRF_K,
) -> list[tuple[str, float, int, dict]]:
    """Documents ranked by `mode` ("hybrid", "bm25", "dense"): [(doc_id, score, best chunk index, signals)].
    `bm25` and `dense` map chunk indices to scores; either may cover only part of the chunks (the OS's
    archival
    search returns a top list)."""
    b_doc, d_doc = per_document(keys, bm25), per_document(keys, dense)
    b_rank, d_rank = ranks(b_doc, positive_only=True), ranks(d_doc)
    docs = set(b_rank) | set(d_rank)
    if mode == "hybrid" and fusion == "z":
        every = {k[0] for k in keys}
        zb = _z({d: s for d, (s, _) in b_doc.items()}, every, 0.0)
        dvals = {d: s for d, (s, _) in d_doc.items()}
        zd = _z(dvals, every, min(dvals.values()) if dvals else 0.0)
        docs = {d for d in every if d in b_rank or d in d_rank}
    out = []
    for doc in docs:
        br, dr = b_rank.get(doc), d_rank.get(doc)
        if mode == "bm25":
            if br is None:
                continue
            score, best = b_doc[doc][0], b_doc[doc][1]
        elif mode == "dense":
            if dr is None:
                continue
            score, best = d_doc[doc][0], d_doc[doc][1]
        elif fusion == "z":
            score = zd[doc] + weight * zb[doc]
            best = _best_chunk(doc, keys, bm25, dense, b_doc, d_doc)
        else:
            score = (1.0 / (rrf_k + br) if br else 0.0) + (1.0 / (rrf_k + dr) if dr else 0.0)
            best = _best_chunk(doc, keys, bm25, dense, b_doc, d_doc)
        signals = {
            "bm25": float(bm25.get(best, 0.0)),
            "similarity": float(dense.get(best, d_doc.get(doc, (0.0,))[0])),
            "bm25_rank": br,
            "dense_rank": dr,
        }
        out.append((doc, float(score), best, signals))
    out.sort(key=lambda x: (-x[1], x[0]))
    return out


def _best_chunk(
    doc: str,
    keys: list[tuple[str, int]],
    bm25: dict[int, float],
    dense: dict[int, float],
    b_doc: dict,
    d_doc: dict,
) -> int:
    """The document's chunk with the best sum of BM25 and cosine scores, each scaled by the doc's best."""
    cands = {i for i in list(bm25) + list(dense) if keys[i][0] == doc}
    bmax = max(b_doc.get(doc, (0.0,))[0], 1e-9)
    dmax = max(d_doc.get(doc, (0.0,))[0], 1e-9)
    return max(sorted(cands), key=lambda i: bm25.get(i, 0.0) / bmax + dense.get(i, 0.0) / dmax)


def ranked_hits(keys: list, texts: list[str], docs: dict, bm25: dict[int, float], dense: dict[int, float],
                mode: str, weight: float, k: int) -> list[Hit]:
    """The top `k` documents of one chunk index (the library's in-memory one or the OS app's): fused scores,
    one hit per document with its best chunk. `mode` "rrf" is the hybrid fused by reciprocal rank."""
    ranked = fuse(keys, bm25, dense, "hybrid" if mode == "rrf" else mode, weight,
                  "rrf" if mode == "rrf" else "z")[:k]
    return [Hit(doc, score, texts[best], keys[best][1], dict(docs[doc]["metadata"]), sig["bm25"],
                sig["similarity"], sig["bm25_rank"], sig["dense_rank"])
            for doc, score, best, sig in ranked]
