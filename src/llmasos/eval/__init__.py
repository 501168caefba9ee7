"""Evaluation: perplexity, BLEU, ROUGE-L and capacity planning (`llmasos eval ...`, `llmasos plan`)."""
