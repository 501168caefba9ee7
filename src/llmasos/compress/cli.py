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
    model: Annotated[str, typer.Option("--model", "-m", help="HF model directory or hub name, a GGUF file, or builtin")],
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


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


def _summary(title: str, rows: list[tuple[str, str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("", "before", "after"):
        table.add_column(col)
    for r in rows:
        table.add_row(*r)
    Console().print(table)


def _speed_rows(before_dir: Path | str, after_dir: Path | str, threads: int | None) -> list[tuple[str, str, str]]:
    from llmasos.compress.common import decode_tok_s

    a, b = (decode_tok_s(d, num_threads=threads) for d in (before_dir, after_dir))
    return [("decode tok/s (batch 1)", f"{a:.1f}", f"{b:.1f} ({b / a:.2f}x)")]


def _ppl(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


_ERRORS = (ValueError, FileNotFoundError)
StepsOpt = Annotated[int, typer.Option("--steps", help="Optimizer steps")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Sequences per step")]
SeqOpt = Annotated[int, typer.Option("--seq-len", help="Tokens per sequence (capped by the model's context)")]
LrOpt = Annotated[float, typer.Option("--lr", help="Peak learning rate")]
PrecOpt = Annotated[str, typer.Option("--precision", help="auto | fp32 | bf16")]
SpeedOpt = Annotated[bool, typer.Option("--speed/--no-speed", help="Also time batch-1 decode through LLM()")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads (default: all cores)")]


@compress_app.command("distill")
def distill(
    teacher: Annotated[str, typer.Option("--teacher", "-t", help="Teacher: HF model directory or hub name, a GGUF file, or builtin")],
    data: Annotated[Path, typer.Option("--data", help="Prepared dataset directory (llmasos train prepare)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the student to")],
    layers: Annotated[int | None, typer.Option("--layers", help="Student depth (layers spread evenly)")] = None,
    keep_every: Annotated[int | None, typer.Option("--keep-every", help="Copy every k-th teacher layer")] = None,
    temperature: Annotated[float, typer.Option(help="Softmax temperature of the KL term")] = 2.0,
    alpha: Annotated[float, typer.Option(help="Weight of the KL term (1 - alpha goes to cross-entropy)")] = 0.5,
    hidden_weight: Annotated[float, typer.Option("--hidden-weight", help="Weight of the hidden-state cosine loss")
                             ] = 0.0,
    reverse_kl: Annotated[bool, typer.Option("--reverse-kl", help="KL(student || teacher) instead")] = False,
    steps: StepsOpt = 200, batch_size: BatchOpt = 8, seq_len: SeqOpt = 128, lr: LrOpt = 3e-4,
    precision: PrecOpt = "auto", speed: SpeedOpt = True, threads: ThreadsOpt = None,
) -> None:
    """Distil a teacher into a shallower student initialised from its layers; prints size, perplexity, speed."""
    from llmasos.compress.common import RunSettings, disk_bytes, resolve_dir
    from llmasos.compress.distill import KDConfig
    from llmasos.compress.distill import distill as run_distill

    try:
        kd = KDConfig(temperature=temperature, alpha=alpha, hidden_weight=hidden_weight, reverse_kl=reverse_kl)
        run = RunSettings(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, precision=precision,
                          num_threads=threads)
        r = run_distill(teacher, data, out, kd, run, num_layers=layers, keep_every=keep_every, progress=True)
    except _ERRORS as exc:
        raise _fail(exc) from exc
    t_dir = resolve_dir(teacher)
    rows = [("layers (copied from)", str(_depth(t_dir)), f"{len(r.layer_map)} {r.layer_map}"),
            ("params", f"{r.teacher_params / 1e6:.2f}M", f"{r.student_params / 1e6:.2f}M "
             f"({r.student_params / r.teacher_params:.0%})"),
            ("disk MB", f"{disk_bytes(t_dir) / 1e6:.1f}", f"{disk_bytes(out) / 1e6:.1f}"),
            ("val perplexity", _ppl(r.teacher_ppl), f"{_ppl(r.student_ppl)} (at init {_ppl(r.student_ppl_init)})")]
    if speed:
        rows += _speed_rows(t_dir, out, threads)
    _summary("distillation: teacher -> student", rows)
    typer.echo(f"wrote {out}")


def _depth(model_dir: Path) -> int:
    from llmasos.models.config import ModelConfig
    from llmasos.models.loader import read_hf_config

    return ModelConfig.from_hf(read_hf_config(model_dir)).num_layers


@compress_app.command("prune")
def prune(
    model: Annotated[str, typer.Option("--model", "-m", help="HF model directory or hub name, a GGUF file, or builtin")],
    calib: Annotated[Path, typer.Option("--calib", help="Prepared dataset: calibration, recovery and eval data")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the pruned model to")],
    method: Annotated[str, typer.Option(help="magnitude | wanda (zeroed weights) | structured (smaller layers)")
                      ] = "wanda",
    sparsity: Annotated[float, typer.Option(help="Fraction of each row zeroed; structured: default drop ratio")
                        ] = 0.5,
    heads_keep_ratio: Annotated[float | None, typer.Option("--heads-keep-ratio", help="Structured: KV groups kept")
                                ] = None,
    ffn_keep_ratio: Annotated[float | None, typer.Option("--ffn-keep-ratio", help="Structured: FFN channels kept")
                              ] = None,
    recover_steps: Annotated[int, typer.Option("--recover-steps", help="Fine-tune steps after pruning")] = 0,
    calib_samples: Annotated[int, typer.Option("--calib-samples", help="Calibration sequences")] = 32,
    batch_size: BatchOpt = 8, seq_len: SeqOpt = 128, lr: LrOpt = 1e-4, precision: PrecOpt = "auto",
    speed: SpeedOpt = True, threads: ThreadsOpt = None,
) -> None:
    """Prune by magnitude or Wanda (unstructured), or remove heads and FFN channels (structured), then recover."""
    from llmasos.compress.common import RunSettings, disk_bytes, resolve_dir
    from llmasos.compress.prune_job import prune as run_prune
    from llmasos.compress.prune_job import validate

    try:
        validate(method, sparsity, heads_keep_ratio, ffn_keep_ratio)
        if recover_steps < 0:
            raise ValueError(f"recover_steps must be >= 0, got {recover_steps}")
        run = RunSettings(batch_size=batch_size, seq_len=seq_len, lr=lr, precision=precision, num_threads=threads)
        r = run_prune(model, method, calib, out, sparsity, heads_keep_ratio, ffn_keep_ratio, recover_steps, run,
                      calib_samples=calib_samples, progress=True)
    except _ERRORS as exc:
        raise _fail(exc) from exc
    src = resolve_dir(model)
    rows = [("params", f"{r.params_before / 1e6:.3f}M", f"{r.params_after / 1e6:.3f}M "
             f"({r.params_after / r.params_before:.0%})"),
            ("non-zero params", f"{r.params_before / 1e6:.3f}M", f"{r.nonzero_after / 1e6:.3f}M"),
            ("block linear sparsity", "-", f"{r.block_sparsity:.1%}"),
            ("disk MB", f"{disk_bytes(src) / 1e6:.1f}", f"{disk_bytes(out) / 1e6:.1f}"),
            ("val perplexity", _ppl(r.ppl_before), f"{_ppl(r.ppl_pruned)} pruned, {_ppl(r.ppl_recovered)} recovered")]
    if r.num_kv_heads:
        rows.insert(1, ("KV heads / FFN size per layer", f"{r.num_kv_heads[0]} / {r.intermediate_size[0]}",
                        f"{r.num_kv_heads[1]} / {r.intermediate_size[1]}"))
    if speed:
        rows += _speed_rows(src, out, threads)
    _summary(f"pruning ({method})", rows)
    typer.echo(f"wrote {out}")
