"""Preferences from a chat message ("cheap wireless headphones for running"): the LLM fills a JSON schema
(category / price_max / keywords) with structured output, and a rule parser checks and completes it. The rules
are exact on prices ("under $300") and on category names; the model adds the rest. Everything is validated
against the catalogue, so a small model can only narrow the request with values that exist."""

from __future__ import annotations

import re
from typing import Any

STOP_WORDS = """a an the and or for with to of in on at by from my me i im i'm we you your some any want need looking
would like please show find get buy recommend something things stuff good best new that this is are be it its
under below less than cheaper max maximum around about up budget price priced cost costs dollars usd eur euros"""
STOP = frozenset(STOP_WORDS.split())
CHEAP = {"cheap", "cheaper", "cheapest", "affordable", "inexpensive", "budget", "low-cost", "value"}
PRICE_RE = re.compile(r"(?:under|below|less than|cheaper than|max(?:imum)?|up to|<|at most|no more than|within)\s*"
                      r"(?:\$|€|£)?\s*(\d+(?:[.,]\d+)?)\s*(k\b)?", re.IGNORECASE)
BARE_PRICE_RE = re.compile(r"(?:\$|€|£)\s*(\d+(?:[.,]\d+)?)|(\d+(?:[.,]\d+)?)\s*(?:\$|€|£|dollars|euros|usd|eur)\b",
                           re.IGNORECASE)
WORD_RE = re.compile(r"[a-z][a-z\-]+")


def schema(categories: list[str]) -> dict:
    return {"type": "object", "additionalProperties": False,
            "properties": {"category": {"type": "string", "enum": sorted(categories) + ["any"]},
                           "price_max": {"type": "integer", "minimum": 0, "maximum": 1000000},
                           "keywords": {"type": "array", "maxItems": 4,
                                        "items": {"type": "string", "minLength": 2, "maxLength": 24}}},
            "required": ["category", "price_max", "keywords"]}


def prompt(text: str, categories: list[str]) -> list[dict]:
    return [{"role": "system", "content": "Extract the shopping preferences of the request as JSON. category: one "
             f"of {', '.join(sorted(categories))}, or any. price_max: the highest acceptable price as a "
             "number, 0 if none is given. keywords: the wanted features, a few words each."},
            {"role": "user", "content": "cheap wireless headphones for running under $80"},
            {"role": "assistant", "content": '{"category": "headphones", "price_max": 80, '
             '"keywords": ["wireless", "running"]}'},
            {"role": "user", "content": text}]


def rule_preferences(text: str, categories: list[str], synonyms: dict[str, str],
                     vocabulary: set[str]) -> dict[str, Any]:
    """Category by name or synonym, price_max from "under 300" / "$300", keywords: the request's words that the
    catalogue uses (minus stop words and the category's own words)."""
    low = text.lower()
    words = WORD_RE.findall(low)
    category = None
    for w in words:
        for cand in (w, w.rstrip("s")):
            if cand in synonyms:
                category = synonyms[cand]
                break
        if category:
            break
    price_max = None
    m = PRICE_RE.search(low) or BARE_PRICE_RE.search(low)
    if m:
        raw = next(g for g in m.groups() if g and g[0].isdigit())
        price_max = float(raw.replace(",", "."))
        if m.lastindex and m.lastindex >= 2 and m.group(2) and m.group(2).lower() == "k":
            price_max *= 1000
    cat_words = {w for w, c in synonyms.items() if c == category}
    keywords = []
    for w in words:
        if w in STOP or w in cat_words or w.rstrip("s") in cat_words or w in keywords:
            continue
        if w in vocabulary or w in CHEAP:
            keywords.append(w)
    return {"category": category, "price_max": price_max, "keywords": keywords,
            "cheap": any(w in CHEAP for w in words)}


def merge(rules: dict, llm: dict | None, categories: list[str], vocabulary: set[str], text: str = ""
          ) -> dict[str, Any]:
    """Rules win where they found something; the model's values fill the gaps when they are valid."""
    out = {"category": rules["category"], "price_max": rules["price_max"], "keywords": list(rules["keywords"]),
           "source": {"category": "rules" if rules["category"] else None,
                      "price_max": "rules" if rules["price_max"] else None}}
    if llm:
        cat = llm.get("category")
        if out["category"] is None and cat in categories:
            out["category"], out["source"]["category"] = cat, "llm"
        price = llm.get("price_max")
        # a price only when the request states that number (a small model invents prices)
        if out["price_max"] is None and isinstance(price, int | float) and price > 0 \
                and re.search(r"\b" + str(int(price)) + r"\b", text):
            out["price_max"], out["source"]["price_max"] = float(price), "llm"
        for kw in llm.get("keywords") or []:
            for w in WORD_RE.findall(str(kw).lower()):
                if w in vocabulary and w not in STOP and w not in out["keywords"]:
                    out["keywords"].append(w)
    return out
