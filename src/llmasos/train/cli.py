"""`llmasos train ...`: tokenizers, data, pre-training, fine-tuning, recipes."""

from __future__ import annotations

import typer

train_app = typer.Typer(no_args_is_help=True, help="Train tokenizers and models, fine-tune, rebuild the built-in model.")
