"""The working context: the prompt for one turn, built within the model's window and the request's max_tokens.

Policy, in order of precedence (each part capped at a share of the window so none can crowd out the rest):
1. the system prompt and the pinned core-memory blocks;
2. the new user message (a huge one keeps its head and tail around a marker);
3. the rolling summary of turns older than the verbatim window;
4. the most relevant earlier turns (recall) and long-term items (archival), the latter marked untrusted;
5. as many recent turns, verbatim, as the rest of the window holds, newest first.
The rendered prompt is then counted exactly with the model's tokenizer and chat template, and trimmed until
it fits: it never overflows. What was kept, summarised, dropped or truncated goes into the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from llmasos.system.errors import ContextTooLong
from llmasos.system.guards.injection import UNTRUSTED_NOTICE, wrap_untrusted
from llmasos.system.memory.codec import ChatCodec, Msg
from llmasos.system.memory.stores import ArchivalMemory, CoreMemory, Hit, RecallMemory, SummaryStore

MIN_PROMPT = 16  # fewer tokens than this for the prompt cannot hold even a truncated question
NO_ID = 1 << 62  # "below this id": every stored message
SAFETY = 2  # tokens of slack for tokenizer merges at the joins
CORE_HEAD = "Pinned memory:\n"
SUMMARY_HEAD = "Summary of the earlier conversation:\n"
RECALL_HEAD = "Relevant earlier turns:\n"
JOIN = "\n\n"  # between the parts of the system message


@dataclass
class ContextReport:
    budget: int = 0
    prompt_tokens: int = 0
    kept_turns: int = 0
    summarised_turns: int = 0
    dropped_turns: int = 0
    recall_items: int = 0
    archival_items: int = 0
    truncated: list[str] = field(default_factory=list)
    build_ms: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ContextResult:
    messages: list[Msg]
    prompt: str
    prompt_tokens: int
    report: ContextReport
    prompt_ids: list[int] = field(default_factory=list)  # the prompt's token ids: the kernel need not encode again


@dataclass
class ContextShares:
    system: float = 0.25
    user: float = 0.45
    core: float = 0.10
    summary: float = 0.15
    recall: float = 0.15


class ContextBuilder:
    def __init__(self, codec: ChatCodec, recall: RecallMemory, archival: ArchivalMemory, core: CoreMemory,
                 summaries: SummaryStore, shares: ContextShares | None = None, recall_k: int = 4) -> None:
        self.codec, self.recall, self.archival, self.core, self.summaries = codec, recall, archival, core, summaries
        self.shares = shares or ContextShares()
        self.recall_k = recall_k

    def build(self, app: str, session: str, message: str, *, window: int, max_tokens: int, user: str = "",
              system_prompt: str = "", use_recall: bool = True, use_archival: bool = True,
              before_id: int | None = None) -> ContextResult:
        """`before_id`: the id of the stored user message of this turn (older messages form the history)."""
        with self.recall.db.reading():
            return self._build(app, session, message, window=window, max_tokens=max_tokens, user=user,
                               system_prompt=system_prompt, use_recall=use_recall, use_archival=use_archival,
                               before_id=before_id)

    def _build(self, app: str, session: str, message: str, *, window: int, max_tokens: int, user: str,
               system_prompt: str, use_recall: bool, use_archival: bool, before_id: int | None) -> ContextResult:
        t0 = time.perf_counter()
        budget = window - max_tokens
        if budget < MIN_PROMPT:
            raise ContextTooLong(f"max_tokens={max_tokens} leaves {budget} of the {window}-token context window "
                                 f"for the prompt; at least {MIN_PROMPT} are needed", param="max_tokens")
        rep = ContextReport(budget=budget)
        c, sh = self.codec, self.shares
        base, per_msg = c.overhead()
        avail = budget - base - SAFETY

        system = self._fit(system_prompt, int(avail * sh.system), "system_prompt", rep)
        blocks = self.core.get_all(app, user)
        core_text = self._fit("\n".join(f"<memory label=\"{k}\">\n{v}\n</memory>" for k, v in blocks.items()),
                              int(avail * sh.core), "core_memory", rep)
        # The headers and joins of the system message count too (estimates that fit make one render enough).
        n_sys = c.count(system) + (c.count(JOIN) if system else 0)
        n_core = c.count(core_text) + (c.count(CORE_HEAD + JOIN) if core_text else 0)
        question = self._fit(message, max(int(avail * sh.user), avail - n_sys - n_core - 8, 1),
                             "message", rep, keep_tail=True)  # at least one token of it: never an empty question
        rest = avail - n_sys - n_core - c.count(question)

        summary = self.summaries.get(app, session)
        summary_text = self._fit(summary.text, int(rest * sh.summary), "summary", rep) if summary else ""

        # Recent turns: newest first, until the rest of the window (less the recall reserve) is used.
        recall_reserve = int(rest * sh.recall) if (use_recall or use_archival) else 0
        room = rest - recall_reserve - (c.count(summary_text) + c.count(SUMMARY_HEAD + JOIN) if summary_text else 0)
        recent, recent_ids, left = self._recent(app, session, before_id, room, per_msg)
        no_turn = before_id if before_id is not None else NO_ID

        hits: list[Hit] = []
        if recall_reserve > 0 and message.strip():  # retrieval gets its reserve and what the recent turns left
            hits = self._relevant(app, session, user, message, recent_ids[0] if recent_ids else no_turn, use_recall,
                                  use_archival, recall_reserve + left, before_id)

        while True:
            msgs = self._assemble(system, core_text, summary_text, hits, recent, question)
            prompt = c.render(msgs)
            ids = c.encode(prompt)
            n = len(ids)
            if n <= budget:
                break
            # Over by a few tokens (merges at the joins) or a tiny window: give up the least important part.
            if hits:
                hits.pop()
            elif recent:
                recent.pop(0)
                recent_ids.pop(0)
                while recent and recent[0]["role"] == "assistant":
                    recent.pop(0)
                    recent_ids.pop(0)
            elif summary_text:
                summary_text = c.truncate(summary_text, max(c.count(summary_text) - (n - budget) - 4, 0))
                rep.truncated.append("summary")
            elif core_text:
                core_text = c.truncate(core_text, max(c.count(core_text) - (n - budget) - 4, 0))
                rep.truncated.append("core_memory")
            elif system:
                system = c.truncate(system, max(c.count(system) - (n - budget) - 4, 0))
                rep.truncated.append("system_prompt")
            elif c.count(question) > 1:
                question = c.truncate(question, max(c.count(question) - (n - budget) - 4, 1))
                rep.truncated.append("message")
            else:
                raise ContextTooLong(f"the chat template alone takes {n} tokens, more than the {budget} available "
                                     f"with max_tokens={max_tokens}", param="max_tokens")
        # Account for what the prompt holds: every earlier turn is kept verbatim, covered by the summary in the
        # prompt, or dropped (the count is taken after trimming, so it matches the prompt actually sent).
        rep.kept_turns = len(recent)
        rep.recall_items = sum(h.source == "recall" for h in hits)
        rep.archival_items = sum(h.source == "archival" for h in hits)
        oldest_kept = recent_ids[0] if recent_ids else no_turn
        covered = summary.covered_upto if summary is not None and summary_text else 0
        older, rep.summarised_turns = self.recall.count_below(app, session, [oldest_kept, min(oldest_kept, covered + 1)])
        rep.dropped_turns = older - rep.summarised_turns
        rep.prompt_tokens = n
        rep.truncated = sorted(set(rep.truncated))
        rep.build_ms = (time.perf_counter() - t0) * 1000
        return ContextResult(msgs, prompt, n, rep, ids)

    # -- parts -----------------------------------------------------------------------------------------
    def _fit(self, text: str, cap: int, name: str, rep: ContextReport, keep_tail: bool = False) -> str:
        if not text:
            return ""
        cap = max(cap, 0)
        if self.codec.count(text) <= cap:
            return text
        rep.truncated.append(name)
        return self.codec.truncate(text, cap, keep_tail=keep_tail)

    def _recent(self, app: str, session: str, before_id: int | None, room: int,
                per_msg: int) -> tuple[list[Msg], list[int], int]:
        """The newest turns that fit in `room`, oldest first, their ids, and the room they leave."""
        kept: list[tuple[int, Msg, int]] = []
        cursor = before_id
        full = False
        while room > 0 and not full:
            # A page about as long as the room holds (turns of ~16 tokens): one query for most windows.
            page = self.recall.recent(app, session, before_id=cursor, limit=min(max(room // 16, 32), 1000))
            if not page:
                break
            for m in page:
                cost = m.tokens + per_msg
                if cost > room:
                    full = True
                    break
                role = m.role if m.role in ("user", "assistant") else "user"
                kept.append((m.id, {"role": role, "content": m.content}, cost))
                room -= cost
            cursor = page[-1].id
        # Chat templates want user/assistant alternation: a window cut mid-exchange must not open on a reply.
        while kept and kept[-1][1]["role"] == "assistant":
            room += kept.pop()[2]
        kept.reverse()
        return [m for _, m, _ in kept], [i for i, _, _ in kept], max(room, 0)

    def _relevant(self, app: str, session: str, user: str, message: str, oldest_kept: int,
                  use_recall: bool, use_archival: bool, room: int, before_id: int | None) -> list[Hit]:
        # The turn's own message was embedded when it was stored: reuse that rather than embed it again.
        qv = self.recall.stored_embedding(app, session, before_id, message) if before_id is not None else None
        if qv is None:
            qv = self.recall.embed([message])[0]
        hits: list[Hit] = []
        if use_recall:
            hits += self.recall.search(app, message, self.recall_k, session=session, exclude_from=oldest_kept,
                                       query_vec=qv)
        if use_archival:
            hits += self.archival.search(app, message, self.recall_k, user=user, query_vec=qv)
        hits.sort(key=lambda h: -h.score)
        # Each item costs its line as _assemble writes it; the first of each kind also its header.
        heads = {"recall": self.codec.count(RECALL_HEAD + JOIN), "archival": self.codec.count(UNTRUSTED_NOTICE + JOIN)}
        out = []
        for h in hits:
            cost = self.codec.count(_line(h)) + 1 + heads[h.source]
            if cost > room:
                continue
            out.append(h)
            room -= cost
            heads[h.source] = 0
        return out

    def _assemble(self, system: str, core: str, summary: str, hits: list[Hit], recent: list[Msg],
                  question: str) -> list[Msg]:
        parts = [system] if system else []
        if core:
            parts.append(CORE_HEAD + core)
        if summary:
            parts.append(SUMMARY_HEAD + summary)
        recalled = [h for h in hits if h.source == "recall"]
        archived = [h for h in hits if h.source == "archival"]
        if recalled:
            parts.append(RECALL_HEAD + "\n".join(_line(h) for h in recalled))
        if archived:
            parts.append(UNTRUSTED_NOTICE + "\n" + "\n".join(_line(h) for h in archived))
        msgs: list[Msg] = [{"role": "system", "content": JOIN.join(parts)}] if parts else []
        msgs += recent
        msgs.append({"role": "user", "content": question})
        return msgs


def _line(h: Hit) -> str:
    """A retrieved item as it appears in the system message: archival items fenced off as untrusted."""
    return wrap_untrusted(h.text, "archival") if h.source == "archival" else f"- {h.role}: {h.text}"
