"""`llmasos adapt ...`: LoRA, prompt tuning and prefix tuning."""

from __future__ import annotations

import typer

adapt_app = typer.Typer(no_args_is_help=True, help="Train small adapters (LoRA, prompt, prefix) on a frozen base model.")
