"""The writer's functions, written against the SDK context (`ctx.llm`): titles, continuation, polishing, and
correction (classical spelling + an optional LLM grammar pass held to minimal edits)."""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from llmasos.apps.writer.spelling import Correction, Edit, SpellChecker, apply_edits, protected_spans

STYLES = {
    "formal": "formal and professional: no contractions, no slang, complete sentences",
    "casual": "casual and relaxed, like talking to a friend",
    "concise": "concise: remove filler words and redundancy, keep every fact",
    "friendly": "warm and friendly, polite and positive",
    "academic": "academic: precise, objective and impersonal",
    "persuasive": "persuasive and confident",
    "simple": "simple: short sentences and everyday words",
}
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SENTENCES = re.compile(r"[^.!?\u3002\uff01\uff1f\n]+[.!?\u3002\uff01\uff1f]*\s*")
_TOKENS = re.compile(r"\w+(?:['\u2019]\w+)*|[^\w\s]")
_STOP = {
    "a", "an", "the", "and", "or", "but", "if", "of", "to", "in", "on", "at", "by", "for", "with",
    "from", "as", "is", "are", "was", "were", "be", "been", "being", "it", "its", "this", "that",
    "these", "those", "there", "here", "we", "you", "he", "she", "they", "i", "me", "my", "our", "your",
    "his", "her", "their", "them", "not", "no", "so", "than", "then", "into", "over", "under", "about",
    "after", "before", "while", "which", "who", "whom", "what", "when", "where", "why", "how", "can",
    "could", "will", "would", "should", "may", "might", "must", "do", "does", "did", "done", "have",
    "has", "had", "also", "very", "more", "most", "such", "some", "any", "each", "all", "other", "only",
    "just",
}
# Function words the grammar pass may insert, delete or swap (articles, prepositions, auxiliaries, ...).
_FUNCTION = _STOP | {"an", "a", "the", "am", "were", "was"}


def is_chinese(text: str) -> bool:
    cjk = len(_CJK.findall(text))
    return cjk > 0 and cjk >= 0.3 * len(re.sub(r"\s", "", text))


# -- titles --------------------------------------------------------------------------------------------------

def _clean_title(raw: str) -> str:
    line = next((ln for ln in raw.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^\s*(?:\d+[.)]\s*|[-*#]+\s*|title\s*[:\-]\s*)", "", line, flags=re.IGNORECASE)
    line = line.strip().strip("\"'\u201c\u201d*`").strip()
    line = line.rstrip(".:;,")
    words = line.split()
    if len(words) > 12:
        line = " ".join(words[:12])
    return line


def _title_key(title: str) -> str:
    return " ".join(re.findall(r"\w+", title.lower()))


def keyword_titles(text: str, n: int) -> list[str]:
    """Extractive titles from the text's most frequent content words and its first sentence (no model)."""
    words = re.findall(r"[^\W\d_]{3,}", text)
    counts = Counter(w.lower() for w in words if w.lower() not in _STOP)
    top = [w for w, _ in counts.most_common(6)]
    out = []
    first = _SENTENCES.match(text.strip())
    if first:
        sent = first.group().strip().rstrip(".!?")
        if 2 <= len(sent.split()) <= 10:
            out.append(sent)
    if top:
        out.append(" ".join(w.capitalize() for w in top[:3]))
        out.append(f"On {top[0].capitalize()}")
        if len(top) > 1:
            out.append(f"{top[0].capitalize()} and {top[1].capitalize()}")
            out.append(f"{top[0].capitalize()}: {' '.join(top[1:4])}")
        for w in top[1:]:
            out.append(f"{top[0].capitalize()} and {w}")
    if not out:
        out.append(" ".join(text.split()[:6]) or "Untitled")
    return out[:max(n, 1) * 2]


async def titles(ctx: Any, text: str, n: int = 5) -> list[str]:
    """n distinct short titles: sampled from the LLM (several samples per call, several seeds), deduplicated;
    topped up with extractive titles when a small model repeats itself or returns nothing usable."""
    n = max(1, int(n))
    msgs = [{"role": "system", "content": "You write short, catchy titles (at most 10 words). "
                                          "Reply with one title only."},
            {"role": "user", "content": f"Write a title for this text:\n\n{text.strip()[:3000]}"}]
    out: list[str] = []
    seen: set[str] = set()
    for seed in range(3):
        if len(out) >= n:
            break
        res = await ctx.llm.chat(msgs, max_tokens=24, temperature=0.9, top_p=0.95, n=n, seed=seed,
                                 stop=["\n"])
        texts = [c.get("text", "") if isinstance(c, dict) else str(c) for c in res.get("choices") or []]
        for raw in texts or [res.get("text", "")]:
            t = _clean_title(raw)
            key = _title_key(t)
            meta = re.search(r"\b(title|titles|concise|catchy)\b", key)  # the model talking about the task
            if 2 <= len(key.split()) <= 12 and len(t) <= 90 and key not in seen and not meta:
                seen.add(key)
                out.append(t)
    for t in keyword_titles(text, n):
        if len(out) >= n:
            break
        key = _title_key(t)
        if key and key not in seen:
            seen.add(key)
            out.append(t)
    return out[:n]


# -- continuation --------------------------------------------------------------------------------------------

def _continue_messages(text: str) -> list[dict]:
    return [{"role": "system", "content": "You continue the user's text in the same style and language. "
                                          "Write only the continuation; do not repeat the text or "
                                          "comment on it."},
            {"role": "user", "content": f"Continue this text:\n\n{text.strip()[-4000:]}"}]


async def continue_stream(ctx: Any, text: str, max_tokens: int = 200) -> AsyncIterator[str]:
    """The continuation piece by piece, at most `max_tokens` tokens."""
    async for item in ctx.llm.stream(_continue_messages(text), max_tokens=max(1, int(max_tokens)),
                                     temperature=0.7, top_p=0.9, repetition_penalty=1.1):
        if item.get("delta"):
            yield item["delta"]


async def continue_text(ctx: Any, text: str, max_tokens: int = 200) -> str:
    out = "".join([d async for d in continue_stream(ctx, text, max_tokens)])
    # A small model sometimes announces what it is about to do: drop such a preamble line.
    return re.sub(r"^\s*(?:here is|here's|sure)[^\n]*:\s*\n+", "", out, flags=re.IGNORECASE)


# -- polishing -----------------------------------------------------------------------------------------------

async def polish(ctx: Any, text: str, style: str = "formal") -> str:
    """The text rewritten in a named style (see STYLES; any other word is passed to the model as is). Spelling
    is fixed first; if the model's reply is empty or not a plausible rewrite, the spell-corrected text is
    returned rather than noise."""
    base = (await correct(ctx, text, llm_grammar=False)).text
    desc = STYLES.get(style.lower().strip(), style)
    msgs = [{"role": "system", "content": "You rewrite texts. Keep the meaning, the facts and the language. "
                                          "Reply with the rewritten text only."},
            {"role": "user", "content": f"Rewrite this text in a {desc} style:\n\n{base}"}]
    limit = max(64, int(len(base.split()) * 2.5) + 32)
    out = await ctx.llm.chat(msgs, max_tokens=limit, temperature=0.3, top_p=0.9, repetition_penalty=1.05)
    result = out["text"].strip()
    result = re.sub(r"^(?:here is|here's|sure)[^\n:]*:\s*", "", result, flags=re.IGNORECASE).strip()
    ratio = len(result) / max(1, len(base))
    if not result or not (0.2 <= ratio <= 3.0):
        return base
    return result


# -- correction ----------------------------------------------------------------------------------------------

_checker: SpellChecker | None = None


def checker() -> SpellChecker:
    global _checker
    if _checker is None:
        _checker = SpellChecker()
    return _checker


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def minimal_edits(original: str, proposed: str, protected: list[tuple[int, int]], chinese: bool = False,
                  max_edits: int | None = None) -> list[Edit]:
    """The small, local differences between `original` and a model's `proposed` version, as edits of
    `original`. Whole-sentence rewrites give nothing: if the two differ too much, no edit is accepted.
    English: token-level diff; an edit replaces at most two tokens by at most two, and is either a small
    spelling change (edit distance <= 2) or a change of function words / punctuation. Chinese: character-level
    diff; only substitutions of one or two characters by as many."""
    if chinese:
        toks = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S", original)]
        new = re.findall(r"\S", proposed)
    else:
        toks = [(m.start(), m.end(), m.group()) for m in _TOKENS.finditer(original)]
        new = _TOKENS.findall(proposed)
    old = [t[2] for t in toks]
    if not old or not new:
        return []
    sm = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    if sm.ratio() < (0.85 if chinese else 0.75):
        return []  # a rewrite, not a correction
    edits: list[Edit] = []
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            continue
        a, b = old[i1:i2], new[j1:j2]
        if chinese:
            if op != "replace" or len(a) != len(b) or len(a) > 2 or not all(_CJK.match(c) for c in a + b):
                continue
        else:
            if len(a) > 2 or len(b) > 2:
                continue
            small = op == "replace" and len(a) == len(b) == 1 \
                and _levenshtein(a[0].lower(), b[0].lower()) <= 2 and a[0][:1].isupper() == b[0][:1].isupper()
            functional = all(t.lower() in _FUNCTION or not t[0].isalnum() for t in a + b)
            if not (small or functional):
                continue
        if i1 < len(toks):
            start = toks[i1][0] if i1 < i2 else (toks[i1 - 1][1] if i1 > 0 else 0)
        else:
            start = toks[-1][1]
        end = toks[i2 - 1][1] if i2 > i1 else start
        if any(s < max(end, start + 1) and start < e for s, e in protected):
            continue
        if chinese:
            repl = "".join(b)
        elif i1 == i2:  # insertion: add a space on the right side
            word = b[0][0].isalnum() if b else False
            repl = (" " + " ".join(b)) if word and start > 0 else " ".join(b)
        else:
            repl = " ".join(b)
            if not a[0][0].isalnum() or (b and not b[0][0].isalnum()):
                repl = "".join(b)
        if i2 > i1 and not b and start > 0 and original[start - 1] == " ":
            start -= 1  # deletion: take the space before the word too
        if original[start:end] == repl:
            continue
        edits.append(Edit(start, end, original[start:end], repl, "grammar"))
    limit = max_edits if max_edits is not None else max(1, len(old) // 8)
    return edits if len(edits) <= limit else []


async def _grammar(ctx: Any, text: str) -> list[Edit]:
    """LLM grammar/wording pass, sentence by sentence, held to minimal edits of `text`."""
    chinese = is_chinese(text)
    protected = protected_spans(text)
    edits: list[Edit] = []
    for m in _SENTENCES.finditer(text):
        sent = m.group().rstrip()
        if len(sent.split()) < 3 and not chinese:
            continue
        prompt = ("改正这个句子中的错别字和语法错误，只输出改正后的句子：\n" if chinese else
                  "Correct the grammar and spelling of this sentence. Change as little as possible. "
                  "Reply with the corrected sentence only.\n\n")
        out = await ctx.llm.chat([{"role": "user", "content": prompt + sent}],
                                 max_tokens=max(32, 2 * len(sent.split()) + 24), temperature=0.0)
        proposed = out["text"].strip().splitlines()[0].strip() if out["text"].strip() else ""
        proposed = proposed.strip("\"'\u201c\u201d")
        local = [(s - m.start(), e - m.start()) for s, e in protected if e > m.start() and s < m.end()]
        for e in minimal_edits(sent, proposed, local, chinese):
            edits.append(Edit(e.start + m.start(), e.end + m.start(), e.original, e.replacement, e.kind))
    return edits


def _to_original(pos: int, edits: list[Edit]) -> int | None:
    """A position of the spell-corrected text mapped back to the original (None inside a changed word)."""
    shift = 0
    for e in sorted(edits, key=lambda x: x.start):
        new_start = e.start + shift
        new_end = new_start + len(e.replacement)
        if pos <= new_start:
            break
        if pos < new_end:
            return None
        shift += len(e.replacement) - (e.end - e.start)
    return pos - shift


async def correct(ctx: Any, text: str, user_words: set[str] | frozenset[str] = frozenset(),
                  llm_grammar: bool = False) -> Correction:
    """Minimal edits to `text`: spelling (SymSpell, English) and optionally the LLM grammar pass."""
    edits = [] if is_chinese(text) else checker().check(text, user_words)
    if llm_grammar and ctx is not None:
        users = {u.lower() for u in user_words}
        fixed = apply_edits(text, edits)
        for g in await _grammar(ctx, fixed):
            s, e = _to_original(g.start, edits), _to_original(g.end, edits)
            if s is None or e is None or any(x.start < max(e, s + 1) and s < x.end for x in edits):
                continue
            if any(w.lower() in users for w in re.findall(r"\w+", text[s:e])):
                continue
            edits.append(Edit(s, e, text[s:e], g.replacement, "grammar"))
    edits.sort(key=lambda x: x.start)
    return Correction(apply_edits(text, edits), edits)
