"""Classical spelling correction with minimal edits: SymSpell over the English frequency dictionary that
`symspellpy` ships (82,765 words with Google n-gram counts) plus its bigram dictionary for context.

Only words the dictionary does not know are corrected, and only when they do not look intentional: proper
nouns (capitalised inside a sentence), acronyms, words with digits or underscores, URLs, e-mail addresses,
paths, code (backticks, identifiers such as `os.path`) and the user's own words are left alone. A known word
is replaced only when a neighbour one edit away is far more frequent *and* the context (bigrams) supports it
while it gives the written word no support at all.
"""

from __future__ import annotations

import math
import os
import re
import threading
from dataclasses import asdict, dataclass
from typing import Any

_WORD = re.compile(r"[A-Za-z]+(?:['\u2019][A-Za-z]+)*")
_PROTECTED = re.compile(
    r"```.*?```|`[^`\n]*`"                       # code blocks and inline code
    r"|\b(?:https?|ftp)://\S+|\bwww\.\S+"        # URLs
    r"|\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+"            # e-mail addresses
    r"|\S*[A-Za-z0-9][_/\\=<>{}\[\]()#$|~^*@][A-Za-z0-9]\S*"   # identifiers, paths, expressions
    r"|\b\w+(?:\.\w+)+\(?\)?"                    # dotted names: os.path, e.g, v1.2
    r"|\b\w*\d\w*\b",                            # anything with a digit: 3rd, utf8, 2024
    re.DOTALL)
_SENT_END = re.compile(r"[.!?:;\n]\s*$")
_KEYBOARD = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
_PREFIXES = ("sub", "multi", "co", "en", "re", "un", "pre", "non", "over", "under", "inter", "super", "meta",
             "auto", "de", "dis", "mis", "post", "semi", "micro", "macro", "pseudo", "out", "up")
_SUFFIXES = ("s", "es", "ed", "d", "ing", "er", "ers", "ly", "able", "ness")


def _near_keys() -> dict[str, set[str]]:
    pos = {c: (r, i) for r, row in enumerate(_KEYBOARD) for i, c in enumerate(row)}
    return {c: {d for d, (rr, ii) in pos.items() if d != c and abs(rr - r) <= 1 and abs(ii - i) <= 1}
            for c, (r, i) in pos.items()}


_NEAR = _near_keys()


def channel_cost(intended: str, typed: str) -> float:
    """Weighted Damerau (OSA) distance of a keyboard typo: slips onto a neighbouring key, doubled letters,
    omissions and swaps cost 1; a substitution or an extra letter far from the keys around it costs 2."""
    n, m = len(intended), len(typed)
    d = [[0.0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        d[i][0] = float(i)
    for j in range(1, m + 1):
        d[0][j] = d[0][j - 1] + _extra_cost(typed[j - 1], intended[0] if n else "", "")
    for i in range(1, n + 1):
        x = intended[i - 1]
        for j in range(1, m + 1):
            y = typed[j - 1]
            sub = 0.0 if x == y else (1.0 if y in _NEAR.get(x, ()) else 2.0)
            ins = _extra_cost(y, x, intended[i] if i < n else "")
            best = min(d[i - 1][j - 1] + sub, d[i - 1][j] + 1.0, d[i][j - 1] + ins)
            if i > 1 and j > 1 and x == typed[j - 2] and intended[i - 2] == y and x != y:
                best = min(best, d[i - 2][j - 2] + 1.0)
            d[i][j] = best
    return d[n][m]


def _extra_cost(c: str, before: str, after: str) -> float:
    for k in (before, after):
        if k and (c == k or c in _NEAR.get(k, ())):
            return 1.0
    return 2.0


@dataclass
class Edit:
    """One change: `text[start:end]` (the original) becomes `replacement`."""

    start: int
    end: int
    original: str
    replacement: str
    kind: str = "spelling"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Correction:
    text: str
    edits: list[Edit]

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "edits": [e.as_dict() for e in self.edits]}


def apply_edits(text: str, edits: list[Edit]) -> str:
    out, pos = [], 0
    for e in sorted(edits, key=lambda e: e.start):
        out.append(text[pos:e.start])
        out.append(e.replacement)
        pos = e.end
    out.append(text[pos:])
    return "".join(out)


def protected_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _PROTECTED.finditer(text)]


class _Dicts:
    """The SymSpell index and the bigram counts, loaded once per process (about 3-4 s)."""

    _lock = threading.Lock()
    _loaded: _Dicts | None = None

    def __init__(self) -> None:
        import symspellpy
        from symspellpy import SymSpell

        folder = os.path.dirname(symspellpy.__file__)
        self.sym = SymSpell(max_dictionary_edit_distance=2, prefix_length=7)
        self.sym.load_dictionary(os.path.join(folder, "frequency_dictionary_en_82_765.txt"), 0, 1)
        self.words: dict[str, int] = self.sym.words
        self.bigrams: dict[str, int] = {}
        with open(os.path.join(folder, "frequency_bigramdictionary_en_243_342.txt"), encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    self.bigrams[f"{parts[0]} {parts[1]}"] = int(parts[2])

    @classmethod
    def get(cls) -> _Dicts:
        with cls._lock:
            if cls._loaded is None:
                cls._loaded = _Dicts()
            return cls._loaded


class SpellChecker:
    """English spelling correction: `check(text, user_words)` -> list of `Edit` (character offsets)."""

    # Weights of the candidate score (tuned on typo seed 1; the evaluation uses seed 13):
    # log count - DIST_COST * keyboard channel cost + CONTEXT * log bigram support.
    DIST_COST = 8.0
    CONTEXT = 0.5
    # A known word is replaced only by a neighbour at least this many times more frequent.
    REAL_WORD_RATIO = 2000.0
    # Score of leaving an unknown word as written (an intentional word), and the lead the best fix needs.
    KEEP = 6.0
    MARGIN = 2.0

    def __init__(self) -> None:
        self.d = _Dicts.get()

    def known(self, word: str) -> bool:
        return word.lower() in self.d.words

    def looks_formed(self, word: str) -> bool:
        """Unknown but regularly formed from known words: compounds (namespace, datetime), prefixes
        (subelement, multipart) and inflections of known stems (prepends, builtins)."""
        w = self.d.words
        for i in range(4, len(word) - 3):
            if word[:i] in w and word[i:] in w and w[word[:i]] > 1_000_000 and w[word[i:]] > 1_000_000:
                return True
        for p in _PREFIXES:
            rest = word[len(p):]
            if word.startswith(p) and len(rest) >= 4 and rest in w:
                return True
        for suf in _SUFFIXES:
            stem = word[:-len(suf)]
            if word.endswith(suf) and len(stem) >= 4 and stem in w:
                return True
        return False

    def _bigram(self, a: str | None, b: str | None) -> int:
        if not a or not b:
            return 0
        return self.d.bigrams.get(f"{a} {b}", 0)

    def _context(self, prev: str | None, cand: str, nxt: str | None) -> float:
        return math.log1p(self._bigram(prev, cand)) + math.log1p(self._bigram(cand, nxt))

    def suggest(self, word: str, prev: str | None = None, nxt: str | None = None) -> str | None:
        """The correction of one lowercase word unknown to the dictionary, or None when unsure."""
        from symspellpy import Verbosity

        if len(word) < 3:
            return None
        max_d = 2 if len(word) >= 5 else 1
        cands = self.d.sym.lookup(word, Verbosity.ALL, max_edit_distance=max_d, transfer_casing=False)
        if not cands:
            return None
        keep = self.KEEP + self.CONTEXT * self._context(prev, word, nxt)
        best, best_score, second = None, -1e9, -1e9
        for c in cands:
            if len(c.term) < 2 or (len(c.term) < 3 and c.distance > 0 and len(word) > 3):
                continue
            cost = channel_cost(c.term, word)
            score = math.log(c.count) - self.DIST_COST * cost \
                + self.CONTEXT * self._context(prev, c.term, nxt)
            if score > best_score:
                best, best_score, second = c, score, best_score
            elif score > second:
                second = score
        if best is None or best_score < keep:
            return None
        if best_score - second < self.MARGIN:
            return None  # a close rival: too unsure
        return best.term

    def real_word(self, word: str, prev: str | None, nxt: str | None) -> str | None:
        """A known but rare word with a far more frequent neighbour (one edit) that the context prefers."""
        from symspellpy import Verbosity

        if len(word) < 4 or (prev is None and nxt is None):
            return None
        own = self.d.words.get(word, 0)
        own_ctx = self._bigram(prev, word) + self._bigram(word, nxt)
        if own_ctx > 0:
            return None
        best, best_ctx = None, 0
        for c in self.d.sym.lookup(word, Verbosity.ALL, max_edit_distance=1, transfer_casing=False):
            if c.distance != 1 or c.count < self.REAL_WORD_RATIO * max(own, 1):
                continue
            ctx = min(self._bigram(prev, c.term) if prev else 10**9,
                      self._bigram(c.term, nxt) if nxt else 10**9)
            if ctx > best_ctx:
                best, best_ctx = c.term, ctx
        return best

    def check(self, text: str, user_words: set[str] | frozenset[str] = frozenset()) -> list[Edit]:
        protected = protected_spans(text)
        user = {w.lower() for w in user_words}
        tokens = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]
        edits: list[Edit] = []
        pi = 0
        for i, (s, e, tok) in enumerate(tokens):
            while pi < len(protected) and protected[pi][1] <= s:
                pi += 1
            if pi < len(protected) and protected[pi][0] < e:
                continue  # inside a URL, code, a path, a number...
            if "'" in tok or "\u2019" in tok:
                base, _, suffix = tok.replace("\u2019", "'").partition("'")
                if suffix.lower() != "s":
                    continue
                tok, e = base, s + len(base)
            low = tok.lower()
            if low in user or len(tok) < 3:
                continue
            sentence_start = s == 0 or bool(_SENT_END.search(text[:s])) or text[max(0, s - 1)] in "\"'(\u201c"
            capital = tok[0].isupper() and not sentence_start
            if tok.isupper() or capital or any(c.isupper() for c in tok[1:]):
                continue  # acronyms, proper nouns, CamelCase
            if text[e:e + 1] == "-" or text[max(0, s - 1):s] == "-":
                pass  # hyphenated compounds: each part is checked like any word
            prev = tokens[i - 1][2].lower() if i > 0 and _adjacent(text, tokens[i - 1][1], s) else None
            has_next = i + 1 < len(tokens) and _adjacent(text, e, tokens[i + 1][0])
            nxt = tokens[i + 1][2].lower() if has_next else None
            if low in self.d.words:
                fix = self.real_word(low, prev, nxt)
            elif self.looks_formed(low):
                continue
            else:
                fix = self.suggest(low, prev, nxt)
            if fix and fix != low:
                edits.append(Edit(s, e, text[s:e], _match_case(tok, fix)))
        return edits


def _adjacent(text: str, a: int, b: int) -> bool:
    """Two words are neighbours for the bigram context when only spaces separate them."""
    return text[a:b].strip() == ""


def _match_case(original: str, fix: str) -> str:
    if original.isupper() and len(original) > 1:
        return fix.upper()
    if original[0].isupper():
        return fix[0].upper() + fix[1:]
    return fix
