"""A knowledge base kept in the OS, through the SDK only: documents and their chunks in the app's storage
(collection `kb_<name>`), chunk embeddings in its archival memory (metadata `kb`, `doc`, `chunk`). BM25 runs
in
this process over the stored chunks (rebuilt when the stored version changes); the embedding ranking comes
from
the OS's archival search."""

from __future__ import annotations

import contextlib
import re
import uuid
from typing import Any

import numpy as np

from llmasos.apps.knowledge_qa.ingest import chunk_text, normalize
from llmasos.apps.knowledge_qa.kb import KnowledgeBase
from llmasos.apps.knowledge_qa.retrieval import BM25_WEIGHT, Hit, ranked_hits

DENSE_TOP = 100  # chunks taken from the archival search per query (its maximum k)
MAX_DOCS = 1000  # documents per knowledge base (one storage listing)
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class StoredKnowledgeBase(KnowledgeBase):
    def __init__(self, ctx: Any, name: str = "default") -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError("a knowledge base name is 1-64 letters, digits, '_' or '-'")
        super().__init__(ctx=ctx)
        self.name, self.collection = name, f"kb_{name}"
        self._version: str | None = None
        self._bodies: dict[str, dict] = {}

    async def _refresh(self) -> None:
        """Reload the chunks from storage when another call (or replica) changed the knowledge base."""
        try:
            version = await self._ctx.storage.get(f"{self.collection}:version")
        except Exception as exc:  # noqa: BLE001 - NotFound: nothing stored yet
            if type(exc).__name__ != "NotFound":
                raise
            version = ""
        if version == self._version:
            return
        rows = await self._ctx.storage.find(self.collection, limit=MAX_DOCS)
        with self._lock:
            self._bodies = {r["id"]: r["body"] for r in rows}
            self._docs, self._keys, self._texts = {}, [], []
            for doc_id, body in sorted(self._bodies.items()):
                self._docs[doc_id] = {
                    "text": body["text"],
                    "metadata": body["metadata"],
                    "n_chunks": len(body["chunks"]),
                }
                self._keys += [(doc_id, j) for j in range(len(body["chunks"]))]
                self._texts += body["chunks"]
            self._vecs = np.zeros((0, 384), dtype=np.float32)  # the vectors live in archival memory
            self._dirty, self._version = True, version

    async def _bump(self) -> None:
        self._version = None
        await self._ctx.storage.set(f"{self.collection}:version", uuid.uuid4().hex)

    async def count(self) -> int:
        await self._refresh()
        return len(self._docs)

    async def adocuments(self) -> list[dict]:
        await self._refresh()
        return self.documents()

    async def aadd(self, documents: list[dict] | dict) -> list[str]:
        docs = [normalize(d) for d in ([documents] if isinstance(documents, dict) else list(documents))]
        if len({d["id"] for d in docs}) != len(docs):
            raise ValueError("document ids must be unique")
        await self._refresh()
        if len(set(self._bodies) | {d["id"] for d in docs}) > MAX_DOCS:
            raise ValueError(f"a knowledge base holds at most {MAX_DOCS} documents")
        for d in docs:
            await self._adelete(d["id"])
            title = str(d["metadata"].get("title") or d["id"])
            chunks = [
                c if (j == 0 and c.startswith(title)) else f"{title}\n{c}"
                for j, c in enumerate(chunk_text(d["text"]))
            ]
            metas = [{"kb": self.name, "doc": d["id"], "chunk": j} for j in range(len(chunks))]
            ids = await self._ctx.memory.archive(chunks, metas, shared=True)
            await self._ctx.storage.put_doc(
                self.collection,
                d["id"],
                {"text": d["text"], "metadata": d["metadata"], "chunks": chunks, "archival_ids": ids},
            )
        await self._bump()
        return [d["id"] for d in docs]

    async def _adelete(self, doc_id: str) -> bool:
        body = self._bodies.get(doc_id)
        if body is None:
            return False
        for item in body.get("archival_ids", []):
            with contextlib.suppress(Exception):  # already gone: the document still goes
                await self._ctx.memory.archival_delete(item)
        await self._ctx.storage.delete_doc(self.collection, doc_id)
        return True

    async def adelete(self, doc_id: str) -> bool:
        await self._refresh()
        found = await self._adelete(doc_id)
        if found:
            await self._bump()
        return found

    async def asearch(
        self, query: str, k: int = 5, mode: str = "hybrid", weight: float = BM25_WEIGHT
    ) -> list[Hit]:
        self._check_query(query, mode)
        await self._refresh()
        if not self._keys:
            return []
        dense: dict[int, float] = {}
        if mode != "bm25":
            index = {key: i for i, key in enumerate(self._keys)}
            for h in await self._ctx.memory.archival_search(query, k=DENSE_TOP, filters={"kb": self.name}):
                i = index.get((h["meta"].get("doc"), h["meta"].get("chunk")))
                if i is not None:
                    dense[i] = float(h["score"])
        with self._lock:
            return ranked_hits(self._keys, self._texts, self._docs, self._bm25_scores(query, mode), dense, mode,
                               weight, k)
