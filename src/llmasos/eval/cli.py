"""`llmasos eval ...` and `llmasos plan`."""

from __future__ import annotations

import typer

eval_app = typer.Typer(no_args_is_help=True, help="Evaluate models and outputs: perplexity, BLEU, ROUGE-L.")
