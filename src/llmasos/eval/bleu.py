"""Corpus BLEU with sacrebleu, so scores and signatures are the ones papers report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sacrebleu.metrics.bleu import BLEU

# "char" is sacrebleu's character tokenizer: every non-space character is a token.
TOKENIZERS = ("13a", "zh", "char", "intl", "none")


def check_parallel(hyps: Sequence[str], refs: Sequence[Sequence[str]], names: Sequence[str] | None = None) -> None:
    """Raise ValueError unless there is at least one reference stream and each has one line per hypothesis."""
    if not refs:
        raise ValueError("at least one reference is required")
    for i, ref in enumerate(refs):
        if len(ref) != len(hyps):
            name = names[i] if names else f"reference {i + 1}"
            raise ValueError(f"{name} has {len(ref)} lines but the hypotheses have {len(hyps)}")


def bleu(hyps: Sequence[str], refs: Sequence[Sequence[str]], tokenize: str = "13a",
         lowercase: bool = False) -> dict[str, Any]:
    """Corpus BLEU of `hyps` against one or more reference streams (`refs[k][i]` is reference k of line i)."""
    if tokenize not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {tokenize!r}; choose one of {', '.join(TOKENIZERS)}")
    check_parallel(hyps, refs)
    metric = BLEU(tokenize=tokenize, lowercase=lowercase)
    score = metric.corpus_score(list(hyps), [list(r) for r in refs])
    return {
        "bleu": score.score,
        "precisions": list(score.precisions),
        "bp": score.bp,
        "sys_len": score.sys_len,
        "ref_len": score.ref_len,
        "signature": str(metric.get_signature()),
    }
