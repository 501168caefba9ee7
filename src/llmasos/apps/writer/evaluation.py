"""Evaluation of `Writer.correct` on sentences with injected typos.

Data: `data/sentences_en.txt`, 400 first sentences of Python standard-library docstrings (prose only), and
`data/sentences_protected.txt`, 30 sentences written for this app that are full of things a corrector must not
touch (names, numbers, URLs, e-mail addresses, paths, identifiers, code). Typos are injected deterministically
(seeded) into ~15% of the words of at least three letters: deletions, insertions and substitutions of a
neighbouring key, and transpositions of two adjacent letters.

Figures (word level, whitespace tokens): precision of the changes (changed words that now equal the clean
word), recall of the typos (typo'd words that were restored), corpus BLEU (sacrebleu) against the clean text
for the noisy input left unchanged and for the corrected text, and damage: the share of clean sentences that
receive any edit, and the share of their words that are changed.

    .venv/bin/python -m llmasos.apps.writer.evaluation            # spelling only (the default corrector)
    .venv/bin/python -m llmasos.apps.writer.evaluation --llm 40   # also the LLM grammar pass on 40 sentences
"""

from __future__ import annotations

import argparse
import difflib
import random
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"

KEYBOARD = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]


def _neighbours() -> dict[str, str]:
    pos = {c: (r, i) for r, row in enumerate(KEYBOARD) for i, c in enumerate(row)}
    out: dict[str, str] = {}
    for c, (r, i) in pos.items():
        near = []
        for rr in (r - 1, r, r + 1):
            if 0 <= rr < len(KEYBOARD):
                for ii in (i - 1, i, i + 1):
                    if 0 <= ii < len(KEYBOARD[rr]) and (rr, ii) != (r, i):
                        near.append(KEYBOARD[rr][ii])
        out[c] = "".join(near)
    return out


NEAR = _neighbours()


def typo(word: str, rng: random.Random) -> str:
    """One keyboard typo inside the letters of `word` (punctuation around it is kept)."""
    lo = len(word) - len(word.lstrip(".,;:!?\"'()"))
    hi = len(word.rstrip(".,;:!?\"'()"))
    core = word[lo:hi]
    kind = rng.choice(["delete", "insert", "transpose", "substitute"])
    i = rng.randrange(len(core))
    ch = core[i].lower()
    if kind == "delete":
        new = core[:i] + core[i + 1:]
    elif kind == "insert":
        new = core[:i] + rng.choice(NEAR.get(ch, "e")) + core[i:]
    elif kind == "transpose" and len(core) > 1:
        i = min(i, len(core) - 2)
        new = core[:i] + core[i + 1] + core[i] + core[i + 2:]
    else:
        new = core[:i] + rng.choice(NEAR.get(ch, "e")) + core[i + 1:]
    if new == core:
        new = core[:i] + core[i + 1:]
    return word[:lo] + new + word[hi:]


def inject(sentence: str, rng: random.Random, rate: float = 0.15) -> str:
    words = sentence.split(" ")
    out = []
    for w in words:
        letters = w.strip(".,;:!?\"'()")
        if len(letters) >= 3 and letters.isalpha() and rng.random() < rate:
            out.append(typo(w, rng))
        else:
            out.append(w)
    return " ".join(out)


def load(name: str) -> list[str]:
    return [ln.strip() for ln in (DATA / name).read_text(encoding="utf-8").splitlines() if ln.strip()]


def word_scores(clean: list[str], noisy: list[str], fixed: list[str]) -> dict[str, int]:
    """Counts for precision / recall: changes made, correct changes, typos present."""
    c, n = [s.split() for s in clean], [s.split() for s in noisy]
    f = [s.split() for s in fixed]
    changed = good = typos = 0
    for cw, nw, fw in zip(c, n, f, strict=True):
        typos += sum(a != b for a, b in zip(cw, nw, strict=True))
        if len(fw) == len(nw):
            for a, b, x in zip(cw, nw, fw, strict=True):
                if x != b:
                    changed += 1
                    good += x == a
        else:  # a change of word count (only the LLM pass can do it): align and count every change as wrong
            sm = difflib.SequenceMatcher(a=nw, b=fw, autojunk=False)
            for op, i1, i2, j1, j2 in sm.get_opcodes():
                if op != "equal":
                    changed += max(i2 - i1, j2 - j1)
    return {"changed": changed, "good": good, "typos": typos}


def _figures(clean: list[str], noisy: list[str], fixed: list[str]) -> dict[str, float]:
    import sacrebleu

    s = word_scores(clean, noisy, fixed)
    return {
        "precision": s["good"] / s["changed"] if s["changed"] else 1.0,
        "recall": s["good"] / s["typos"] if s["typos"] else 1.0,
        "bleu": sacrebleu.corpus_bleu(fixed, [clean]).score,
        "changed": s["changed"], "typos": s["typos"],
    }


def _damage(sentences: list[str], fixed: list[str]) -> dict[str, float]:
    touched = sum(a != b for a, b in zip(sentences, fixed, strict=True))
    words = sum(len(s.split()) for s in sentences)
    bad = sum(word_scores([a], [a], [b])["changed"] for a, b in zip(sentences, fixed, strict=True))
    return {"sentences": touched / len(sentences), "words": bad / words}


def evaluate(limit: int | None = None, seed: int = 13, rate: float = 0.15, llm_sentences: int = 0,
             writer: Any = None) -> dict[str, Any]:
    """Figures of the spelling corrector (the default `Writer.correct`), of the unchanged input, and, when
    `llm_sentences` > 0, of the corrector with the LLM grammar pass on the first `llm_sentences` sentences."""
    from llmasos.apps.writer import Writer

    w = writer or Writer()
    clean = load("sentences_en.txt")[:limit]
    protected = load("sentences_protected.txt")[:limit]
    rng = random.Random(seed)
    noisy = [inject(s, rng, rate) for s in clean]
    rows: dict[str, Any] = {"sentences": len(clean), "typo_rate": rate, "seed": seed}

    rows["unchanged"] = _figures(clean, noisy, noisy)
    rows["unchanged"]["damage"] = {"sentences": 0.0, "words": 0.0}
    saved = w.llm_grammar
    try:
        w.llm_grammar = False
        t0 = time.perf_counter()
        fixed = [w.correct(s).text for s in noisy]
        rows["spelling"] = _figures(clean, noisy, fixed)
        rows["spelling"]["seconds_per_sentence"] = (time.perf_counter() - t0) / len(noisy)
        rows["spelling"]["damage"] = _damage(clean, [w.correct(s).text for s in clean])
        rows["spelling"]["damage_protected"] = _damage(protected, [w.correct(s).text for s in protected])
        if llm_sentences:
            k = min(llm_sentences, len(clean))
            rows["llm_subset"] = k
            rows["spelling_subset"] = _figures(clean[:k], noisy[:k], fixed[:k])
            rows["spelling_subset"]["damage"] = _damage(clean[:k], [w.correct(s).text for s in clean[:k]])
            w.llm_grammar = True
            t0 = time.perf_counter()
            fixed_llm = [w.correct(s).text for s in noisy[:k]]
            rows["spelling+llm"] = _figures(clean[:k], noisy[:k], fixed_llm)
            rows["spelling+llm"]["seconds_per_sentence"] = (time.perf_counter() - t0) / k
            rows["spelling+llm"]["damage"] = _damage(clean[:k], [w.correct(s).text for s in clean[:k]])
    finally:
        w.llm_grammar = saved
    return rows


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--llm", type=int, default=0, help="sentences for the LLM grammar pass (0: skip it)")
    args = p.parse_args(argv)
    r = evaluate(limit=args.limit, seed=args.seed, llm_sentences=args.llm)
    t = Table(title=f"writer: correction on {r['sentences']} sentences, {r['typo_rate']:.0%} of words typo'd "
                    f"(seed {r['seed']})")
    for col in ("system", "sentences", "precision", "recall", "BLEU", "clean sentences edited",
                "clean words changed", "protected sentences edited"):
        t.add_column(col)

    def row(name: str, key: str, n: int) -> None:
        f = r[key]
        dmg = f.get("damage", {})
        prot = f.get("damage_protected")
        t.add_row(name, str(n), f"{f['precision']:.3f}", f"{f['recall']:.3f}", f"{f['bleu']:.2f}",
                  f"{dmg.get('sentences', 0):.3f}", f"{dmg.get('words', 0):.4f}",
                  f"{prot['sentences']:.3f}" if prot else "-")

    row("unchanged input (baseline)", "unchanged", r["sentences"])
    row("SymSpell + context (default)", "spelling", r["sentences"])
    if "spelling+llm" in r:
        row("SymSpell + context (subset)", "spelling_subset", r["llm_subset"])
        row("SymSpell + LLM grammar pass", "spelling+llm", r["llm_subset"])
    console = Console(width=150)
    console.print(t)
    console.print(f"CPU: {_cpu()}; spelling: {r['spelling']['seconds_per_sentence'] * 1000:.1f} ms/sentence")
    if "spelling+llm" in r:
        console.print(f"LLM pass: {r['spelling+llm']['seconds_per_sentence']:.2f} s/sentence")


if __name__ == "__main__":
    main()
