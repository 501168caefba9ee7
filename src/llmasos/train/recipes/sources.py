"""Redistributable text sources that rebuild offline.

- WordNet 3.0 glosses (Princeton's WordNet licence: use, copy and redistribute with the notice), read from a
  WordNet dict directory: Debian/Ubuntu's `wordnet-base` package puts it in /usr/share/wordnet.
- chatterbot-corpus (BSD-3-Clause), a PyPI dependency: small English conversations.
- Python's reference topics (`pydoc_data.topics`, PSF licence), part of every CPython install.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

WORDNET_DIRS = ["/usr/share/wordnet", "/usr/local/share/wordnet", "/usr/share/WordNet-3.0/dict"]
POS = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}


@dataclass
class Synset:
    pos: str
    words: list[str]
    definition: str
    examples: list[str] = field(default_factory=list)
    hypernym: str | None = None


def find_wordnet(explicit: str | Path | None = None) -> Path:
    candidates = [explicit] if explicit else [os.environ.get("WNHOME", ""), *WORDNET_DIRS]
    for c in candidates:
        if c and (Path(c) / "data.noun").is_file():
            return Path(c)
        if c and (Path(c) / "dict" / "data.noun").is_file():
            return Path(c) / "dict"
    raise FileNotFoundError("WordNet 3.0 data not found (looked in " + ", ".join(str(c) for c in candidates if c) +
                            "); install it with `apt-get install wordnet-base` or set WNHOME")


def _clean_word(w: str) -> str:
    w = w.replace("_", " ")
    return w.split("(")[0] if w.endswith(")") else w  # adjective markers like "big(a)"


def read_wordnet(wn_dir: str | Path) -> list[Synset]:
    """Every synset of data.{noun,verb,adj,adv} with its words, definition, examples and first hypernym."""
    wn_dir = Path(wn_dir)
    raw: dict[tuple[str, str], tuple[str, list[str], str, str | None]] = {}
    for part in ["noun", "verb", "adj", "adv"]:
        with (wn_dir / f"data.{part}").open(encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:
                    continue  # licence header
                head, gloss = line.split("|", 1)
                fields = head.split()
                offset, pos, n_words = fields[0], fields[2], int(fields[3], 16)
                words = [_clean_word(fields[4 + 2 * i]) for i in range(n_words)]
                i = 4 + 2 * n_words
                n_ptrs = int(fields[i])
                hyper = None
                for k in range(n_ptrs):
                    sym, target, tpos = fields[i + 1 + 4 * k : i + 4 + 4 * k]
                    if sym in ("@", "@i") and hyper is None:
                        hyper = f"{target}{tpos}"
                raw[(offset, pos if pos != "s" else "a")] = (pos, words, gloss.strip(), hyper)
    out = []
    for pos, words, gloss, hyper in raw.values():
        parts = [p.strip() for p in gloss.split(";")]
        definition = parts[0]
        examples = [p.strip('"') for p in parts[1:] if p.startswith('"') and p.endswith('"')]
        hyper_word = None
        if hyper:
            target = raw.get((hyper[:-1], hyper[-1] if hyper[-1] != "s" else "a"))
            hyper_word = target[1][0] if target else None
        out.append(Synset(POS[pos], words, definition, examples, hyper_word))
    return out


def chatterbot_conversations() -> list[list[str]]:
    """English chatterbot-corpus conversations as lists of alternating turns."""
    import chatterbot_corpus
    import yaml

    root = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    convs = []
    for f in sorted(root.glob("*.yml")):
        for conv in yaml.safe_load(f.read_text(encoding="utf-8")).get("conversations", []):
            turns = [str(t).strip() for t in conv if str(t).strip()]
            if len(turns) >= 2:
                convs.append(turns)
    return convs


def python_topics() -> Iterator[str]:
    """Python's language reference topics, split into paragraphs."""
    from pydoc_data import topics

    for text in topics.topics.values():
        for para in text.split("\n\n"):
            para = " ".join(para.split())
            if len(para) > 40:
                yield para
