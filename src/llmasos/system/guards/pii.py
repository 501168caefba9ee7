"""PII detection and redaction: e-mail addresses, phone numbers, payment cards, Chinese resident IDs, IBANs.

The digit-shaped kinds are checksum-validated (Luhn, ISO 7064 MOD 11-2, mod-97) so that order numbers,
timestamps and other digit runs are left alone. Phone numbers have no checksum, so they need a recognisable
shape instead: a +country code, North-American grouping, or a Chinese mobile prefix.

Every pattern is anchored on a run boundary by a lookbehind, so the regex engine only tries to match where a
run of digits/letters begins: a megabyte of text is scanned in linear time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from operator import attrgetter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmasos.system.errors import Refused

KINDS: tuple[str, ...] = ("email", "phone", "card", "cn_id", "iban")
Action = Literal["allow", "redact", "mask", "refuse"]
ACTIONS: tuple[str, ...] = ("allow", "redact", "mask", "refuse")


@dataclass(frozen=True, slots=True)
class PIIMatch:
    kind: str
    start: int
    end: int
    text: str


# re.ASCII everywhere: a Chinese character is a "word" character in Unicode mode, which would stop
# "手机13812345678" from matching at its boundary. Where a pattern starts with a character class, the
# boundary lookbehind comes after that first character ("[2-6](?<!\w[2-6])"): a pattern that begins with a
# class lets the regex engine skip non-candidates in C, several times faster than trying every position.
_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w.%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![\w-])",
    re.ASCII)
# E.164 allows at most 15 digits; separators may be doubled as in "+1 (555) 123-4567".
_PHONE_INTL = re.compile(r"\+(?<![\w+]\+)[1-9](?:[ .\-()]{0,2}\d){7,14}(?!\w)", re.ASCII)
# Separators are required: a bare 10-digit run is as likely to be an order number as a phone.
_PHONE_NA = re.compile(r"(?<![\w+])(?:1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}(?!\w)", re.ASCII)
_PHONE_CN = re.compile(r"(?<![\w+])(?:(?:\+|00)?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?!\w)", re.ASCII)
# Cards are written compact or in the issuers' groupings (4-4-4-4[-3], Amex 4-6-5) with one consistent
# separator. The first digit must be a payment network's (2-6): that halves the digit runs which could
# pass Luhn's check by its 1-in-10 chance.
_CARD = re.compile(
    r"[2-6](?<!\w[2-6])(?:\d{12,18}"
    r"|\d{3}([ -])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{1,3})?"
    r"|(?<=3)\d{3}([ -])\d{6}\2\d{4,5})(?!\w)",  # Amex
    re.ASCII)
_CN_ID = re.compile(  # region, birth date, sequence, check character
    r"[1-9](?<!\w[1-9])\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?!\w)",
    re.ASCII)
# Country code, check digits, then up to 30 characters, optionally printed in groups of four.
_IBAN = re.compile(
    r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])")

_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_ID_CHECK = "10X98765432"
_NON_DIGIT = re.compile(r"\D", re.ASCII)
# mod-97 reads each letter as two digits, A=10 ... Z=35
_IBAN_LETTERS = str.maketrans({chr(c): str(c - 55) for c in range(ord("A"), ord("Z") + 1)})
_LUHN_DOUBLED = tuple((2 * d - 9) if d > 4 else 2 * d for d in range(10))
# Overlaps are settled by these first (validated kinds beat an unvalidated phone), then by length.
_PRIORITY = {"email": 3, "cn_id": 3, "iban": 3, "card": 3, "phone": 1}


def _digits(s: str) -> str:
    return _NON_DIGIT.sub("", s)


def _luhn_ok(digits: str) -> bool:
    odd = sum(int(ch) for ch in digits[-1::-2])
    even = sum(_LUHN_DOUBLED[int(ch)] for ch in digits[-2::-2])
    return (odd + even) % 10 == 0


def _cn_id_ok(s: str) -> bool:
    try:
        date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:  # 19490231: the shape allows day 31 of every month
        return False
    total = sum(int(ch) * w for ch, w in zip(s[:17], _CN_ID_WEIGHTS, strict=True))
    return _CN_ID_CHECK[total % 11] == s[17].upper()


def _iban_ok(s: str) -> bool:
    compact = s.replace(" ", "")
    if not 15 <= len(compact) <= 34 or not 2 <= int(compact[2:4]) <= 98:
        return False
    groups = s.split(" ")
    # Spaced IBANs are printed in groups of four; anything else is a different code that happens to match.
    if len(groups) > 1 and any(len(g) != 4 for g in groups[:-1]):
        return False
    rearranged = compact[4:] + compact[:4]
    return int(rearranged.translate(_IBAN_LETTERS)) % 97 == 1


def _card_ok(s: str) -> bool:
    digits = _digits(s)
    return 13 <= len(digits) <= 19 and _luhn_ok(digits)


def _longest_valid(text: str, start: int, end: int, ok: Callable[[str], bool]) -> int | None:
    """The end of the longest prefix of text[start:end], cut at a separator, that `ok` accepts.

    A card followed by its CVV ("4111 1111 1111 1111 123") or an IBAN followed by a capitalised word matches
    the pattern as one run; dropping trailing groups recovers the real number.
    """
    while end > start:
        if ok(text[start:end]):
            return end
        cut = max(text.rfind(" ", start, end), text.rfind("-", start, end))
        if cut <= start:
            return None
        end = cut
    return None


def _validated(pattern: re.Pattern[str], kind: str, ok: Callable[[str], bool]):
    def find(text: str) -> list[PIIMatch]:
        found = []
        for m in pattern.finditer(text):
            end = _longest_valid(text, m.start(), m.end(), ok)
            if end is not None:
                found.append(PIIMatch(kind, m.start(), end, text[m.start():end]))
        return found
    return find


def _plain(pattern: re.Pattern[str], kind: str):
    def find(text: str) -> list[PIIMatch]:
        return [PIIMatch(kind, m.start(), m.end(), m.group()) for m in pattern.finditer(text)]
    return find


_PHONE_SHAPES = [_plain(p, "phone") for p in (_PHONE_INTL, _PHONE_NA, _PHONE_CN)]


def _phones(text: str) -> list[PIIMatch]:
    # The shapes overlap ("+86 138 1234 5678" is both international and Chinese): find_pii keeps one.
    return [m for find in _PHONE_SHAPES for m in find(text)]


_FINDERS = {
    "email": _plain(_EMAIL, "email"),
    "phone": _phones,
    "card": _validated(_CARD, "card", _card_ok),
    "cn_id": _validated(_CN_ID, "cn_id", _cn_id_ok),
    "iban": _validated(_IBAN, "iban", _iban_ok),
}


def _check_kinds(kinds: Iterable[str] | str | None) -> tuple[str, ...]:
    if kinds is None:
        return KINDS
    wanted = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    unknown = [k for k in wanted if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown PII kind {', '.join(map(repr, unknown))}; known kinds: {', '.join(KINDS)}")
    return wanted


def _require_str(text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    return text


def _preference(m: PIIMatch) -> tuple[int, int, int]:
    return -_PRIORITY[m.kind], m.start - m.end, KINDS.index(m.kind)


def _resolve_overlaps(matches: list[PIIMatch]) -> list[PIIMatch]:
    """Keep a non-overlapping subset, preferring validated kinds, then longer matches."""
    kept: list[PIIMatch] = []
    cluster: list[PIIMatch] = []
    cluster_end = -1
    # Sweep clusters of mutually overlapping matches so that settling them stays linear in the match count.
    for m in sorted(matches, key=attrgetter("start", "end")):
        if cluster and m.start >= cluster_end:
            kept.extend(_settle(cluster))
            cluster = []
        cluster_end = max(cluster_end, m.end) if cluster else m.end
        cluster.append(m)
    kept.extend(_settle(cluster))
    return kept


def _settle(cluster: list[PIIMatch]) -> list[PIIMatch]:
    if len(cluster) == 1:
        return cluster
    chosen: list[PIIMatch] = []
    for m in sorted(set(cluster), key=_preference):
        if all(m.end <= c.start or m.start >= c.end for c in chosen):
            chosen.append(m)
    return sorted(chosen, key=attrgetter("start"))


def find_pii(text: str, kinds: Iterable[str] | None = None) -> list[PIIMatch]:
    """All PII in `text` (of the given kinds, default all), sorted by start and non-overlapping."""
    _require_str(text)
    matches = [m for kind in _check_kinds(kinds) for m in _FINDERS[kind](text)]
    return _resolve_overlaps(matches)


def _mask(m: PIIMatch) -> str:
    if m.kind == "email":
        local, _, domain = m.text.partition("@")
        return f"{local[:1]}***@{domain}"
    if m.kind == "card":
        return "**** **** **** " + _digits(m.text)[-4:]
    if m.kind == "phone":
        digits = _digits(m.text)
        return "*" * (len(digits) - 4) + digits[-4:]
    if m.kind == "cn_id":
        return m.text[:6] + "*" * (len(m.text) - 10) + m.text[-4:]
    compact = m.text.replace(" ", "")  # iban
    return compact[:2] + "*" * (len(compact) - 6) + compact[-4:]


def _replace(text: str, matches: list[PIIMatch], render: Callable[[PIIMatch], str]) -> str:
    pieces, pos = [], 0
    for m in matches:
        pieces += [text[pos:m.start], render(m)]
        pos = m.end
    pieces.append(text[pos:])
    return "".join(pieces)


def redact(text: str, mode: str = "redact", kinds: Iterable[str] | None = None) -> tuple[str, list[PIIMatch]]:
    """Replace PII with `[EMAIL]`-style labels (mode "redact") or with a masked hint (mode "mask").

    Returns the new text and the matches, whose spans refer to the original text.
    """
    if mode not in ("redact", "mask"):
        raise ValueError(f"unknown redaction mode {mode!r}; use 'redact' or 'mask'")
    matches = find_pii(text, kinds)
    render = _mask if mode == "mask" else (lambda m: f"[{m.kind.upper()}]")
    return _replace(text, matches, render), matches


def apply_policy(text: str, action: str, kinds: Iterable[str] | None = None,
                 where: str = "input") -> tuple[str, list[PIIMatch]]:
    """Apply one PIIPolicy action to `text`; `allow` still reports the matches (for audit logs).

    Raises Refused for action "refuse" when the text holds any PII of the given kinds.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown PII action {action!r}; use one of {', '.join(ACTIONS)}")
    if action in ("redact", "mask"):
        return redact(text, action, kinds)
    matches = find_pii(text, kinds)
    if action == "refuse" and matches:
        found = ", ".join(sorted({m.kind for m in matches}))
        # The message names kinds only: echoing the data would leak it into error logs.
        raise Refused(f"{where} contains personal data ({found}); this app's policy refuses it")
    return text, matches


class PIIPolicy(BaseModel):
    """What an app does with PII in model input, model output and logs."""

    model_config = ConfigDict(extra="forbid")

    input: Action = "allow"
    output: Action = "allow"
    logs: Action = "redact"
    kinds: list[str] = Field(default_factory=lambda: list(KINDS))

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, value: list[str]) -> list[str]:
        _check_kinds(value)
        return list(dict.fromkeys(value))

    def apply(self, text: str, where: Literal["input", "output", "logs"]) -> tuple[str, list[PIIMatch]]:
        """This policy's action for `where` applied to `text`."""
        return apply_policy(text, getattr(self, where), self.kinds, where=where)
