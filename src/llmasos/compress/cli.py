"""`llmasos compress ...`: quantize, prune, distill."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

compress_app = typer.Typer(no_args_is_help=True, help="Make models smaller and faster: quantize, prune, distill.")

_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")


def _weights_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for g in _WEIGHT_GLOBS for p in model_dir.glob(g))


@compress_app.command("quantize")
def quantize(
    model: Annotated[str, typer.Option("--model", "-m", help="HF model directory or hub name")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the quantized model to")],
    bits: Annotated[int, typer.Option(help="8 (per-channel, symmetric) or 4 (group-wise, asymmetric)")] = 8,
    group_size: Annotated[int, typer.Option("--group-size", help="int4 only: inputs per scale (32, 64, 128)")] = 128,
    dtype: Annotated[str, typer.Option(help="dtype of the layers kept in full precision")] = "bfloat16",
    lm_head: Annotated[bool, typer.Option("--lm-head", help="Quantize the output projection too")] = False,
) -> None:
    """Weight-only quantization, executed by the kernel: `llmasos chat --model OUT` runs it."""
    from llmasos.compress.quantize import model_bytes, quantize_model, save_quantized
    from llmasos.models.loader import load_model

    try:
        m, src = load_model(model, dtype)
        before_mem = model_bytes(m)
        quantize_model(m, bits=bits, group_size=group_size, lm_head=lm_head)
        save_quantized(m, out, src)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    fmt = "int8 per output channel" if bits == 8 else f"int4, groups of {group_size} (scale + min)"
    n = sum(1 for mod in m.modules() if type(mod).__name__ == "QuantLinear")
    before_disk, after_disk = _weights_bytes(src), _weights_bytes(out)
    typer.echo(f"{fmt}: {n} linear layers quantized{' (LM head too)' if lm_head else ''}")
    typer.echo(f"on disk:   {before_disk / 1e6:9.1f} MB -> {after_disk / 1e6:9.1f} MB "
               f"({before_disk / max(after_disk, 1):.2f}x smaller)")
    typer.echo(f"in memory: {before_mem / 1e6:9.1f} MB -> {model_bytes(m) / 1e6:9.1f} MB ({dtype} for the rest)")
    typer.echo(f"wrote {out}")
