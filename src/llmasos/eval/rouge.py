"""ROUGE-L with Google's rouge-score, plus a character tokenizer for text without spaces (Chinese, Japanese)."""

from __future__ import annotations

from collections.abc import Sequence

from rouge_score import rouge_scorer

from llmasos.eval.bleu import check_parallel

TOKENIZERS = ("default", "char")


class CharTokenizer:
    """Each non-space character is a token, lowercased like rouge-score's default tokenizer.

    rouge-score's default tokenizer keeps only [a-z0-9] runs, so Chinese text would score 0.
    """

    def tokenize(self, text: str) -> list[str]:
        return [c for c in text.lower() if not c.isspace()]


def rouge_l(hyps: Sequence[str], refs: Sequence[Sequence[str]], tokenize: str = "default",
            stemmer: bool = False) -> dict[str, dict[str, float]]:
    """Mean over lines of ROUGE-L precision, recall and F1; with several references, each line takes the
    reference with the best F1 (`RougeScorer.score_multi`)."""
    if tokenize not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {tokenize!r}; choose one of {', '.join(TOKENIZERS)}")
    if tokenize == "char" and stemmer:
        # rouge-score applies the Porter stemmer only inside its default tokenizer.
        raise ValueError("--stemmer only applies to the default tokenizer, not to char")
    check_parallel(hyps, refs)
    if not hyps:
        raise ValueError("no lines to score")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stemmer,
                                      tokenizer=CharTokenizer() if tokenize == "char" else None)
    totals = {"precision": 0.0, "recall": 0.0, "fmeasure": 0.0}
    for i, hyp in enumerate(hyps):
        s = scorer.score_multi([r[i] for r in refs], hyp)["rougeL"]
        totals["precision"] += s.precision
        totals["recall"] += s.recall
        totals["fmeasure"] += s.fmeasure
    return {"rougeL": {k: v / len(hyps) for k, v in totals.items()}}
