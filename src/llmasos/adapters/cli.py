"""`llmasos adapt ...`: LoRA, prompt tuning and prefix tuning."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

adapt_app = typer.Typer(no_args_is_help=True, help="Train small adapters (LoRA, prompt, prefix) on a frozen base model.")
err = Console(stderr=True)

BaseOpt = Annotated[str, typer.Option("--model", "-m", help="Base model: HF directory or hub name")]
DataOpt = Annotated[Path, typer.Option("--data", "-d", help="Chat JSONL file, or a directory from `llmasos train prepare`")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Directory for the adapter (and the trainer's checkpoint)")]
StepsOpt = Annotated[int, typer.Option("--steps", help="Optimizer steps")]
LrOpt = Annotated[float, typer.Option("--lr")]
BatchOpt = Annotated[int, typer.Option("--batch-size")]
SeqOpt = Annotated[int, typer.Option("--seq-len")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint in --out")]
SeedOpt = Annotated[int, typer.Option("--seed")]
VirtOpt = Annotated[int, typer.Option("--num-virtual-tokens", help="Virtual tokens (prompt) / prefix length (prefix)")]


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
    return typer.Exit(2)


def _train_cfg(out: Path, steps: int, lr: float, batch_size: int, seq_len: int, threads: int | None, seed: int):  # noqa: ANN202
    from llmasos.train.config import TrainConfig

    return TrainConfig(out_dir=str(out), max_steps=steps, lr=lr, batch_size=batch_size, seq_len=seq_len,
                       num_threads=threads, seed=seed, warmup_steps=min(10, steps - 1), weight_decay=0.0,
                       eval_interval=max(steps // 5, 1), ckpt_interval=max(steps // 5, 1))


def _run(train, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
    from llmasos.train.data import DataError
    from llmasos.train.trainer import result_json

    try:
        result = train(*args, **kwargs)
    except (ValueError, FileNotFoundError, FileExistsError, DataError) as exc:
        raise _fail(exc) from exc
    print(result_json(result))
    err.print(f"adapter written to {result.out_dir}")


@adapt_app.command()
def lora(model: BaseOpt, data: DataOpt, out: OutOpt, steps: StepsOpt = 200, lr: LrOpt = 2e-4, batch_size: BatchOpt = 8,
         seq_len: SeqOpt = 512, threads: ThreadsOpt = None, resume: ResumeOpt = False, seed: SeedOpt = 0,
         rank: Annotated[int, typer.Option("--rank", "-r")] = 8,
         alpha: Annotated[float, typer.Option("--alpha")] = 16.0,
         dropout: Annotated[float, typer.Option("--dropout")] = 0.0,
         target: Annotated[list[str] | None, typer.Option("--target", help="qkv_proj | o_proj | up_proj | down_proj "
                                                          "(repeatable; default qkv_proj, o_proj)")] = None,
         mlp: Annotated[bool, typer.Option("--mlp", help="Also adapt the MLP (up_proj, down_proj)")] = False) -> None:
    """Train a LoRA adapter (low-rank updates of the attention, optionally MLP, projections)."""
    from llmasos.adapters.lora import ATTENTION_TARGETS, MLP_TARGETS, LoraConfig, train_lora

    targets = list(target or ATTENTION_TARGETS) + (list(MLP_TARGETS) if mlp else [])
    try:
        cfg = LoraConfig(r=rank, alpha=alpha, dropout=dropout, target_modules=list(dict.fromkeys(targets)))
        tcfg = _train_cfg(out, steps, lr, batch_size, seq_len, threads, seed)
    except ValueError as exc:
        raise _fail(exc) from exc
    _run(train_lora, model, data, cfg, tcfg, resume=resume)


@adapt_app.command()
def prompt(model: BaseOpt, data: DataOpt, out: OutOpt, steps: StepsOpt = 200, lr: LrOpt = 3e-2,
           batch_size: BatchOpt = 8, seq_len: SeqOpt = 512, threads: ThreadsOpt = None, resume: ResumeOpt = False,
           seed: SeedOpt = 0, num_virtual_tokens: VirtOpt = 20) -> None:
    """Train a prompt tuning adapter (virtual token embeddings in front of every input)."""
    from llmasos.adapters.prompt_tuning import PromptTuningConfig, train_prompt_tuning

    try:
        cfg = PromptTuningConfig(num_virtual_tokens=num_virtual_tokens)
        tcfg = _train_cfg(out, steps, lr, batch_size, seq_len, threads, seed)
    except ValueError as exc:
        raise _fail(exc) from exc
    _run(train_prompt_tuning, model, data, cfg, tcfg, resume=resume)


@adapt_app.command()
def prefix(model: BaseOpt, data: DataOpt, out: OutOpt, steps: StepsOpt = 200, lr: LrOpt = 1e-2,
           batch_size: BatchOpt = 8, seq_len: SeqOpt = 512, threads: ThreadsOpt = None, resume: ResumeOpt = False,
           seed: SeedOpt = 0, num_virtual_tokens: VirtOpt = 10,
           reparam_hidden: Annotated[int, typer.Option("--reparam-hidden", help="MLP width for training "
                                                       "(0: train the K/V directly)")] = 0) -> None:
    """Train a prefix tuning adapter (per-layer key/value prefixes)."""
    from llmasos.adapters.prefix_tuning import PrefixTuningConfig, train_prefix_tuning

    try:
        cfg = PrefixTuningConfig(num_virtual_tokens=num_virtual_tokens, reparam_hidden=reparam_hidden)
        tcfg = _train_cfg(out, steps, lr, batch_size, seq_len, threads, seed)
    except ValueError as exc:
        raise _fail(exc) from exc
    _run(train_prefix_tuning, model, data, cfg, tcfg, resume=resume)


@adapt_app.command()
def merge(model: BaseOpt, adapter: Annotated[Path, typer.Option("--adapter", "-a", help="LoRA adapter directory")],
          out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the merged HF model")]) -> None:
    """Fold a LoRA into its base and write a full Hugging Face model directory."""
    from llmasos.adapters.lora import merge_adapter

    try:
        path = merge_adapter(model, adapter, out)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from exc
    err.print(f"merged model written to {path}")
