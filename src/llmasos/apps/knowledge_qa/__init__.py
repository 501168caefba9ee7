"""`knowledge_qa`: question answering over your documents. Hybrid retrieval (BM25 + all-MiniLM-L6-v2
embeddings,
reciprocal rank fusion, one hit per document), answers grounded in the passages with citations, and a refusal
when
the knowledge base holds nothing relevant enough.

Library: `KnowledgeBase` (kb.py). OS app: `KnowledgeQA`, with one knowledge base per name (`kb`), documents
and
chunks in the app's storage and chunk embeddings in its archival memory, all through the SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from llmasos.apps.knowledge_qa.kb import REFUSAL, Answer, KnowledgeBase
from llmasos.apps.knowledge_qa.retrieval import Hit
from llmasos.apps.knowledge_qa.store import StoredKnowledgeBase
from llmasos.sdk import App, Manifest, handler

__all__ = ["REFUSAL", "Answer", "Hit", "KnowledgeBase", "KnowledgeQA"]

DEFAULT_KB = "default"


class KnowledgeQA(App):
    manifest = Manifest(
        name="knowledge_qa",
        version="0.1.0",
        description="Answers questions from your documents with citations; refuses when they hold no answer.",
        permissions=["llm", "embed", "memory.read", "memory.write", "storage"],
        priority=0,
        weight=1.0,
        latency_sensitive=True,
        handler_timeout=600.0,
        system_prompt="You answer questions from the passages of a knowledge base, citing their ids.",
    )

    def __init__(self) -> None:
        self._kbs: dict[tuple[int, str], StoredKnowledgeBase] = {}

    def _kb(self, ctx: Any, kb: str = DEFAULT_KB) -> StoredKnowledgeBase:
        key = (id(ctx), kb)
        found = self._kbs.get(key)
        if found is None:
            found = self._kbs[key] = StoredKnowledgeBase(ctx, kb)
        return found

    async def chat(self, ctx: Any, session_id: str, message: str) -> str:
        return "".join([piece async for piece in self.chat_stream(ctx, session_id, message)]).strip()

    async def chat_stream(self, ctx: Any, session_id: str, message: str) -> AsyncIterator[str]:
        """The message is a question to the default knowledge base: a grounded answer with its sources."""
        kb = self._kb(ctx)
        if await kb.count() == 0:
            yield (
                "The knowledge base is empty. Add documents with the `add` handler "
                "(POST /v1/apps/knowledge_qa/handlers/add), then ask again."
            )
            return
        async for piece in kb.astream(message):
            yield piece

    @handler
    async def add(self, ctx: Any, documents: list[dict], kb: str = DEFAULT_KB) -> dict:
        """Add or replace documents: [{"id", "text" | "markdown" | "html" | "pdf_base64", "metadata"}]."""
        ids = await self._kb(ctx, kb).aadd(documents)
        return {"kb": kb, "added": ids, "documents": await self._kb(ctx, kb).count()}

    @handler
    async def search(
        self, ctx: Any, query: str, k: int = 5, kb: str = DEFAULT_KB, mode: str = "hybrid"
    ) -> list:
        return [h.to_dict() for h in await self._kb(ctx, kb).asearch(query, int(k), mode)]

    @handler
    async def answer(
        self, ctx: Any, question: str, kb: str = DEFAULT_KB, k: int = 3, generate: bool = True
    ) -> dict:
        return (await self._kb(ctx, kb).aanswer(question, int(k), bool(generate))).to_dict()

    @handler
    async def answer_stream(self, ctx: Any, question: str, kb: str = DEFAULT_KB, k: int = 3) -> AsyncIterator[Any]:
        """The answer as it is generated: first `{"hits", "citations", "refused", "mode"}`, then the text in
        pieces; a last `{"replace": ...}` when the generated text was not grounded (kb.answer_events)."""
        async for ev in self._kb(ctx, kb).aevents(question, int(k)):
            yield ev

    @handler
    async def delete(self, ctx: Any, doc_id: str, kb: str = DEFAULT_KB) -> dict:
        return {"kb": kb, "deleted": await self._kb(ctx, kb).adelete(doc_id)}

    @handler
    async def documents(self, ctx: Any, kb: str = DEFAULT_KB) -> list:
        return await self._kb(ctx, kb).adocuments()
