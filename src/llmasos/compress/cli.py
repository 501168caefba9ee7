"""`llmasos compress ...`: quantize, prune, distill."""

from __future__ import annotations

import typer

compress_app = typer.Typer(no_args_is_help=True, help="Make models smaller and faster: quantize, prune, distill.")
