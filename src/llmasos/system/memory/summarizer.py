"""The rolling summary: turns that left the verbatim window are folded into the session's summary by the LLM,
incrementally (the old summary plus only the new turns), never recomputed from scratch."""

from __future__ import annotations

from llmasos.system.memory.codec import ChatCodec, Msg
from llmasos.system.memory.stores import Message, RecallMemory, Summary, SummaryStore

INSTRUCTION = ("You maintain the running summary of a conversation. Rewrite the summary so that it also covers the "
               "new lines. Keep names, numbers, decisions, open questions and the user's preferences. Reply with "
               "the summary only, in at most {words} words.")


def pending_turns(recall: RecallMemory, summaries: SummaryStore, app: str, session: str,
                  keep_tokens: int) -> tuple[Summary | None, list[Message]]:
    """The turns older than the verbatim window (the newest `keep_tokens` tokens) not yet in the summary,
    oldest first."""
    summary = summaries.get(app, session)
    covered = summary.covered_upto if summary else 0
    room, cursor, boundary = keep_tokens, None, None
    while room > 0:
        page = recall.recent(app, session, before_id=cursor, limit=64)
        if not page:
            return summary, []
        for m in page:
            room -= m.tokens
            if room < 0:
                boundary = m.id + 1
                break
        cursor = page[-1].id
    if boundary is None:
        return summary, []
    return summary, _between(recall, app, session, covered, boundary)


def _between(recall: RecallMemory, app: str, session: str, covered: int, boundary: int) -> list[Message]:
    """Messages with covered < id < boundary, oldest first."""
    out: list[Message] = []
    cursor = boundary
    while True:
        page = recall.recent(app, session, before_id=cursor, limit=256)
        page = [m for m in page if m.id > covered]
        if not page:
            break
        out.extend(page)
        cursor = page[-1].id
    return list(reversed(out))


def summary_prompt(codec: ChatCodec, summary: Summary | None, turns: list[Message], input_budget: int,
                   words: int) -> tuple[list[Msg], int]:
    """The messages asking for the updated summary, with as many pending turns as fit; returns the messages and
    the id of the last turn included."""
    head = f"Current summary:\n{summary.text if summary else '(none yet)'}\n\nNew lines:\n"
    used = codec.count(head) + codec.overhead()[0] + codec.count(INSTRUCTION) + 8
    lines, last = [], turns[0].id if turns else 0
    for m in turns:
        line = f"{m.role}: {m.content}"
        cost = codec.count(line) + 1
        if used + cost > input_budget:
            if not lines:  # one huge turn: its head still goes in, so the summary advances
                lines.append(codec.truncate(line, max(input_budget - used, 8)))
                last = m.id
            break
        lines.append(line)
        used += cost
        last = m.id
    msgs = [{"role": "system", "content": INSTRUCTION.format(words=words)},
            {"role": "user", "content": head + "\n".join(lines)}]
    return msgs, last
