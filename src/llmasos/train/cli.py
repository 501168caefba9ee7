"""`llmasos train ...`: tokenizers, data, pre-training, fine-tuning, recipes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

train_app = typer.Typer(no_args_is_help=True, help="Train tokenizers and models, fine-tune, rebuild the built-in model.")
recipe_app = typer.Typer(no_args_is_help=True, help="End-to-end training recipes.")
train_app.add_typer(recipe_app, name="recipe")
err = Console(stderr=True)

Inputs = Annotated[list[Path], typer.Option("--input", "-i", help=".txt / .jsonl file or directory (repeatable)")]
HubOpt = Annotated[str | None, typer.Option("--hub-dataset", help="HF datasets name[:config], e.g. wikimedia/wikipedia:20231101.en")]
HubLimit = Annotated[int | None, typer.Option("--hub-limit", help="Most documents to read from the hub dataset")]
TextField = Annotated[str, typer.Option("--text-field", help="JSONL / dataset field holding the text")]


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
    return typer.Exit(2)


def _texts(inputs: list[Path] | None, hub: str | None, hub_limit: int | None, text_field: str):  # noqa: ANN202
    from itertools import chain

    from llmasos.train.data import read_hub_dataset, read_texts

    sources = [read_texts(p, text_field) for p in inputs or []]
    if hub:
        name, _, config = hub.partition(":")
        sources.append(read_hub_dataset(name, config or None, text_field=text_field, limit=hub_limit))
    if not sources:
        raise typer.BadParameter("give at least one --input or --hub-dataset")
    return chain.from_iterable(sources)


@train_app.command()
def tokenizer(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the tokenizer to")],
    inputs: Inputs = None,
    hub_dataset: HubOpt = None,
    hub_limit: HubLimit = None,
    text_field: TextField = "text",
    vocab_size: Annotated[int, typer.Option("--vocab-size")] = 8192,
) -> None:
    """Train a byte-level BPE tokenizer (with the chat template and special tokens)."""
    from llmasos.train.tokenizer import train_tokenizer

    try:
        tok = train_tokenizer(_texts(inputs, hub_dataset, hub_limit, text_field), vocab_size, out, show_progress=True)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from exc
    err.print(f"tokenizer with {len(tok)} tokens written to {out}")


@train_app.command()
def prepare(
    tokenizer_dir: Annotated[Path, typer.Option("--tokenizer", "-t", help="Tokenizer or model directory")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for train.bin / val.bin / meta.json")],
    inputs: Inputs = None,
    hub_dataset: HubOpt = None,
    hub_limit: HubLimit = None,
    text_field: TextField = "text",
    val_fraction: Annotated[float, typer.Option("--val-fraction")] = 0.05,
    seed: int = 0,
) -> None:
    """Tokenize a corpus into memory-mapped token files with a train/validation split by document."""
    from transformers import AutoTokenizer

    from llmasos.train.data import prepare_dataset

    try:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        meta = prepare_dataset(_texts(inputs, hub_dataset, hub_limit, text_field), tok, out, val_fraction, seed,
                               tokenizer_path=str(tokenizer_dir.resolve()), progress=True)
    except (ValueError, OSError) as exc:
        raise _fail(exc) from exc
    typer.echo(json.dumps(meta.__dict__, indent=2))


@train_app.command()
def pretrain(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML/JSON: model, data, train sections")],
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint in out_dir")] = False,
) -> None:
    """Pre-train a native decoder model (single process, or data-parallel under torchrun)."""
    from llmasos.train.pretrain import PretrainSpec
    from llmasos.train.pretrain import pretrain as run
    from llmasos.train.trainer import result_json

    try:
        result = run(PretrainSpec.from_file(config), resume=resume)
    except (ValueError, ValidationError, OSError, MemoryError) as exc:
        raise _fail(exc) from exc
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank returns the same result
        typer.echo(result_json(result))


@train_app.command("sft")
def sft_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Base model: HF directory or hub name")],
    data: Annotated[Path, typer.Option("--data", "-d", help='JSONL, one {"messages": [...]} per line')],
    out: Annotated[Path, typer.Option("--out", "-o")],
    steps: Annotated[int, typer.Option("--steps")] = 500,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    grad_accum: Annotated[int, typer.Option("--grad-accum")] = 1,
    seq_len: Annotated[int, typer.Option("--seq-len")] = 512,
    lr: Annotated[float, typer.Option("--lr")] = 1e-4,
    precision: Annotated[str, typer.Option(help="auto | fp32 | bf16")] = "auto",
    resume: Annotated[bool, typer.Option("--resume")] = False,
    backend: Annotated[str, typer.Option(help="native (our DecoderLM) | hf (transformers.Trainer, any causal LM)")] = "native",
    lora: Annotated[bool, typer.Option("--lora", help="hf backend: train a PEFT LoRA adapter, base frozen")] = False,
    lora_rank: Annotated[int, typer.Option("--lora-rank")] = 8,
    lora_alpha: Annotated[float, typer.Option("--lora-alpha")] = 16.0,
    merge: Annotated[bool, typer.Option("--merge", help="hf backend + --lora: also write the merged model to OUT/model")] = False,
) -> None:
    """Chat fine-tuning, loss on assistant tokens only; the full (or merged) model is written to OUT/model."""
    from dataclasses import asdict

    from llmasos.train.config import TrainConfig
    from llmasos.train.sft import read_chat_jsonl, sft
    from llmasos.train.trainer import result_json

    try:
        if backend not in ("native", "hf"):
            raise ValueError(f"--backend must be native or hf, got {backend!r}")
        if backend == "native" and (lora or merge):
            raise ValueError("--lora and --merge need --backend hf")
        if merge and not lora:
            raise ValueError("--merge needs --lora")
        cfg = TrainConfig(out_dir=str(out), max_steps=steps, batch_size=batch_size, grad_accum=grad_accum,
                          seq_len=seq_len, lr=lr, precision=precision, warmup_steps=max(1, steps // 20),
                          eval_interval=max(1, steps // 5), ckpt_interval=max(1, steps // 5))
        convs = read_chat_jsonl(data)
        if backend == "native":
            typer.echo(result_json(sft(model, convs, cfg, resume=resume)))
            return
        from llmasos.train.hf_sft import LoraSpec, hf_sft

        spec = LoraSpec(rank=lora_rank, alpha=lora_alpha) if lora else None
        result = hf_sft(model, convs, cfg, lora=spec, merge=merge, resume=resume)
    except (ValueError, ValidationError, OSError, MemoryError) as exc:
        raise _fail(exc) from exc
    typer.echo(json.dumps(asdict(result), indent=2))


@recipe_app.command()
def builtin(
    out: Annotated[Path, typer.Option("--out", "-o", help="Work directory (stages resume from it)")] = Path("runs/builtin"),
    wordnet: Annotated[str | None, typer.Option(help="WordNet dict directory (default: /usr/share/wordnet)")] = None,
    threads: Annotated[int | None, typer.Option("--threads")] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="A minutes-long shrink to check the pipeline")] = False,
    install: Annotated[bool, typer.Option("--install", help="Copy the result into the package as 'builtin'")] = False,
    distill: Annotated[bool, typer.Option("--distill/--no-distill",
                                          help="Distil the teacher's replies and ship the better model")] = True,
    teacher: Annotated[str | None, typer.Option(help="Teacher model (default: the default model, SmolLM2)")] = None,
    from_model: Annotated[Path | None, typer.Option(
        "--from-model", help="Skip pre-training and chat fine-tuning: start from this trained chat model (e.g. "
                             "src/llmasos/builtin/model) and run distillation and packaging")] = None,
) -> None:
    """Rebuild the built-in model from scratch: corpus, tokenizer, pre-training, chat fine-tuning, distillation
    from a teacher, model card."""
    from dataclasses import replace

    from llmasos.train.recipes.builtin import BuiltinRecipe, run_builtin

    recipe = BuiltinRecipe.smoke() if smoke else BuiltinRecipe()
    recipe = replace(recipe, teacher=teacher) if distill else replace(recipe, distill_prompts=0)
    try:
        if from_model is not None:
            from llmasos.train.recipes.builtin import seed_from_model

            seed_from_model(out, from_model)
        final = run_builtin(out, recipe, wordnet, threads)
    except (ValueError, OSError, MemoryError) as exc:
        raise _fail(exc) from exc
    if install:
        from llmasos.models.default_model import install_builtin

        err.print(f"installed as the built-in model: {install_builtin(final)}")


@train_app.command("seq2seq-data")
def seq2seq_data(
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write")],
    examples: Annotated[int, typer.Option("--examples", "-n")] = 5000,
    seed: int = 0,
) -> None:
    """Write the demo correction task: sentences with typos and duplicated words -> the clean sentence."""
    from llmasos.train.seq2seq_train import correction_pairs

    try:
        recs = correction_pairs(examples, seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r) + "\n" for r in recs))
    except (ValueError, OSError) as exc:
        raise _fail(exc) from exc
    err.print(f"{len(recs)} pairs written to {out}")


@train_app.command("seq2seq")
def seq2seq_cmd(
    data: Annotated[Path, typer.Option("--data", "-d", help='JSONL, one {"source": ..., "target": ...} per line')],
    out: Annotated[Path, typer.Option("--out", "-o")],
    steps: Annotated[int, typer.Option("--steps")] = 2000,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    lr: Annotated[float, typer.Option("--lr")] = 1e-3,
    d_model: Annotated[int, typer.Option("--d-model")] = 256,
    heads: Annotated[int, typer.Option("--heads")] = 4,
    d_ff: Annotated[int, typer.Option("--d-ff")] = 1024,
    layers: Annotated[int, typer.Option("--layers", help="Encoder and decoder layers each")] = 3,
    dropout: Annotated[float, typer.Option("--dropout")] = 0.1,
    max_len: Annotated[int, typer.Option("--max-len", help="Longest source / target in tokens")] = 128,
    vocab_size: Annotated[int, typer.Option("--vocab-size")] = 4000,
    label_smoothing: Annotated[float, typer.Option("--label-smoothing")] = 0.1,
    beams: Annotated[int, typer.Option("--beams", help="Beam width for the validation BLEU")] = 1,
    val_fraction: Annotated[float, typer.Option("--val-fraction")] = 0.1,
    eval_examples: Annotated[int, typer.Option("--eval-examples")] = 200,
    precision: Annotated[str, typer.Option(help="auto | fp32 | bf16")] = "auto",
    resume: Annotated[bool, typer.Option("--resume")] = False,
) -> None:
    """Train the encoder-decoder Transformer on source -> target pairs; prints validation BLEU / ROUGE-L."""
    from dataclasses import asdict

    from llmasos.train.config import TrainConfig
    from llmasos.train.seq2seq_train import Seq2SeqSpec, read_pairs, train_seq2seq

    try:
        cfg = TrainConfig(out_dir=str(out), max_steps=steps, batch_size=batch_size, lr=lr, precision=precision,
                          warmup_steps=max(1, steps // 20), eval_interval=max(1, steps // 5),
                          ckpt_interval=max(1, steps // 5), log_interval=max(1, min(10, steps // 10)))
        spec = Seq2SeqSpec(d_model=d_model, num_heads=heads, d_ff=d_ff, layers=layers, dropout=dropout,
                           max_len=max_len, vocab_size=vocab_size, label_smoothing=label_smoothing)
        result = train_seq2seq(read_pairs(data), cfg, spec, val_fraction=val_fraction, eval_examples=eval_examples,
                               num_beams=beams, resume=resume)
    except (ValueError, ValidationError, OSError, MemoryError) as exc:
        raise _fail(exc) from exc
    typer.echo(json.dumps(asdict(result), indent=2))


@train_app.command("seq2seq-generate")
def seq2seq_generate(
    model: Annotated[Path, typer.Option("--model", "-m", help="A directory written by `train seq2seq` (OUT/model)")],
    inputs: Annotated[list[str], typer.Option("--input", "-i", help="Source text (repeatable)")],
    beams: Annotated[int, typer.Option("--beams")] = 1,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens")] = None,
) -> None:
    """Generate with a trained seq2seq model: one output line per --input."""
    from llmasos.train.seq2seq_train import generate_texts, load_seq2seq

    try:
        m, tok = load_seq2seq(model)
        outs = generate_texts(m, tok, inputs, max_new_tokens=max_tokens, num_beams=beams)
    except (ValueError, OSError) as exc:
        raise _fail(exc) from exc
    for o in outs:
        typer.echo(o)
