"""`llmasos eval ...` and `llmasos plan`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

eval_app = typer.Typer(no_args_is_help=True, help="Evaluate models and outputs: perplexity, BLEU, ROUGE-L.")
out = Console()

HypOpt = Annotated[Path, typer.Option("--hyp", help="Hypotheses, one sentence per line")]
RefOpt = Annotated[list[Path], typer.Option("--ref", help="References, one sentence per line (repeatable)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON")]


def _fail(message: str) -> typer.Exit:
    # typer.echo, not Rich: Rich would wrap a long message over several lines.
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False))


def _table(title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)


def _read_parallel(hyp: Path, refs: list[Path]) -> tuple[list[str], list[list[str]]]:
    from llmasos.eval.bleu import check_parallel
    from llmasos.eval.files import read_lines

    hyps = read_lines(hyp)
    ref_lines = [read_lines(r) for r in refs]
    check_parallel(hyps, ref_lines, [str(r) for r in refs])
    return hyps, ref_lines


@eval_app.command("ppl")
def ppl(
    model: Annotated[str, typer.Option("--model", "-m", help="HF model directory or hub name, a GGUF file, or builtin")],
    data: Annotated[Path, typer.Option("--data", help=".txt (one text per non-empty line) or .jsonl ('text' field)")],
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16")] = "float32",
    max_length: Annotated[int | None, typer.Option("--max-length", help="Window size (default: model context)")] = None,
    stride: Annotated[int | None, typer.Option(help="Window step for long texts (default: max-length / 2)")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Windows per forward pass")] = 8,
    whole_file: Annotated[bool, typer.Option("--whole-file", help="Score a .txt file as one text")] = False,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads (default: all cores)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Perplexity of a model on texts (sliding window for texts longer than the context)."""
    import torch

    from llmasos.eval.files import InputError, read_texts
    from llmasos.eval.perplexity import text_perplexity
    from llmasos.kernel.llm import load_tokenizer
    from llmasos.models.loader import load_model

    try:
        texts = read_texts(data, whole_file=whole_file)
    except InputError as exc:
        raise _fail(str(exc)) from exc
    if threads:
        torch.set_num_threads(threads)
    try:
        lm, model_dir = load_model(model, dtype=dtype)
        tokenizer = load_tokenizer(model_dir)
        if tokenizer is None:
            raise ValueError(f"{model_dir} has no tokenizer")
        res = text_perplexity(lm, tokenizer, texts, max_length=max_length, stride=stride, batch_size=batch_size)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    fields = {"corpus_ppl": res.corpus_ppl, "mean_ppl": res.mean_ppl, "nll": res.nll, "num_tokens": res.num_tokens,
              "num_texts": res.num_texts, "num_skipped": res.num_skipped}
    if as_json:
        _print_json(fields)
        return
    _table(f"perplexity of {model} on {data}", [
        ("corpus ppl", f"{res.corpus_ppl:.4f}"), ("mean ppl", f"{res.mean_ppl:.4f}"), ("NLL (nats)", f"{res.nll:.2f}"),
        ("predicted tokens", str(res.num_tokens)), ("texts", str(res.num_texts)),
        ("skipped (< 2 tokens)", str(res.num_skipped)),
    ])


@eval_app.command("bleu")
def bleu(
    hyp: HypOpt, ref: RefOpt,
    tokenize: Annotated[str, typer.Option(help="13a | zh | char | intl | none")] = "13a",
    lowercase: Annotated[bool, typer.Option("--lowercase", help="Case-insensitive BLEU")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Corpus BLEU (sacrebleu) of hypotheses against one or more references."""
    from llmasos.eval.bleu import bleu as corpus_bleu
    from llmasos.eval.files import InputError

    try:
        hyps, refs = _read_parallel(hyp, ref)
        res = corpus_bleu(hyps, refs, tokenize=tokenize, lowercase=lowercase)
    except (InputError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        _print_json(res)
        return
    _table("BLEU", [("BLEU", f"{res['bleu']:.2f}"),
                    ("1-4 gram precision", " / ".join(f"{p:.1f}" for p in res["precisions"])),
                    ("brevity penalty", f"{res['bp']:.3f}"), ("hyp / ref length", f"{res['sys_len']} / {res['ref_len']}"),
                    ("signature", res["signature"])])


@eval_app.command("rouge")
def rouge(
    hyp: HypOpt, ref: RefOpt,
    tokenize: Annotated[str, typer.Option(help="default (rouge-score's, ASCII words) | char")] = "default",
    stemmer: Annotated[bool, typer.Option("--stemmer/--no-stemmer", help="Porter stemming (default tokenizer)")] = False,
    as_json: JsonOpt = False,
) -> None:
    """ROUGE-L (rouge-score), averaged over sentences; the best reference per sentence."""
    from llmasos.eval.files import InputError
    from llmasos.eval.rouge import rouge_l

    try:
        hyps, refs = _read_parallel(hyp, ref)
        res = rouge_l(hyps, refs, tokenize=tokenize, stemmer=stemmer)
    except (InputError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        _print_json(res)
        return
    r = res["rougeL"]
    _table(f"ROUGE-L ({len(hyps)} sentences)", [("precision", f"{r['precision']:.4f}"),
                                                 ("recall", f"{r['recall']:.4f}"), ("F1", f"{r['fmeasure']:.4f}")])


def _si(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    for scale, prefix in [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]:
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.2f} {unit}".rstrip()


def _bytes(n: float) -> str:
    for scale, unit in [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]:
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def plan(
    model: Annotated[str, typer.Argument(help="HF model directory, config.json, or hub name (only config.json is fetched)")],
    context: Annotated[int | None, typer.Option(help="KV cache / decode context in tokens (default: min(model, 4096))")] = None,
    batch: Annotated[int, typer.Option(help="Sequences in the KV cache")] = 1,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="Training sequence length (default: min(model, 2048))")] = None,
    micro_batch: Annotated[int, typer.Option("--micro-batch", help="Training sequences per step")] = 1,
    kv_dtype: Annotated[str, typer.Option("--kv-dtype", help="float32 | bfloat16 | float16")] = "bfloat16",
    train_dtype: Annotated[str, typer.Option("--train-dtype", help="Activation / compute dtype in training")] = "bfloat16",
    group_size: Annotated[int, typer.Option("--group-size", help="Weights per fp16 scale for int8/int4")] = 128,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Measure this machine (figures given win)")] = True,
    bandwidth_gbs: Annotated[float | None, typer.Option("--bandwidth-gbs", help="Memory bandwidth, GB/s")] = None,
    tflops: Annotated[float | None, typer.Option("--tflops", help="Matmul TFLOP/s (bf16 and fp32)")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads for the probes")] = None,
    device: Annotated[str, typer.Option(help="Device to probe: cpu | cuda")] = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Parameters, memory, KV cache, FLOPs and estimated tokens/s of a model, from its config alone."""
    from llmasos.eval.hardware import probe as probe_hardware
    from llmasos.eval.plan import load_hf_config, make_plan
    from llmasos.models.config import ModelConfig

    try:
        cfg = ModelConfig.from_hf(load_hf_config(model))
        make_plan(cfg, None, context, batch, seq_len, micro_batch, kv_dtype, train_dtype, group_size)  # validate first
    except (ValueError, FileNotFoundError, KeyError) as exc:
        msg = f"config.json lacks {exc}" if isinstance(exc, KeyError) else str(exc)
        raise _fail(msg) from exc
    if device not in ("cpu", "cuda"):
        raise _fail(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and probe:
        import torch

        if not torch.cuda.is_available():
            raise _fail("--device cuda: no CUDA device is available")
    hw = probe_hardware(device, threads, bandwidth_gbs, tflops, run_probes=probe)
    report = {"model": model, **make_plan(cfg, hw, context, batch, seq_len, micro_batch, kv_dtype, train_dtype,
                                          group_size)}
    if as_json:
        _print_json(report)
        return
    p, kv, tr, fl, th = (report[k] for k in ("params", "kv_cache", "training", "flops_per_token", "throughput"))
    c = report["config"]
    rows = [
        ("model", f"{model} ({c['family']}, {c['layers']} layers, hidden {c['hidden_size']}, "
                  f"{c['heads']}/{c['kv_heads']} heads x {c['head_dim']})"),
        ("parameters", f"{_si(p['total'])} (embedding {_si(p['embedding'])}, lm_head {_si(p['lm_head']) if p['lm_head'] else 'tied'}, "
                       f"non-embedding {_si(p['non_embedding'])})"),
        *[(f"weights {d}", _bytes(b)) for d, b in report["weights_bytes"].items()],
        (f"KV cache / token ({kv['dtype']})", _bytes(kv["bytes_per_token"])),
        (f"KV cache {kv['context']} tok x {kv['batch']}", _bytes(kv["bytes"])),
        (f"training memory (seq {tr['seq_len']} x {tr['micro_batch']})",
         f"{_bytes(tr['total'])} = weights {_bytes(tr['weights'])} + grads {_bytes(tr['grads'])} + AdamW "
         f"{_bytes(tr['optimizer'])} + activations ~{_bytes(tr['activations'])}"),
        (f"FLOPs / token (decode at {fl['context']})", _si(fl["forward_decode"], "FLOP")),
        ("FLOPs / token (prefill, training)", f"{_si(fl['forward_prefill'], 'FLOP')}, {_si(fl['training'], 'FLOP')}"),
        ("hardware", f"{hw.device}, {hw.threads} threads, {_si((hw.bandwidth_gbs or 0) * 1e9 or None, 'B/s')}, "
                     f"bf16 {_si((hw.tflops['bfloat16'] or 0) * 1e12 or None, 'FLOP/s')}, "
                     f"fp32 {_si((hw.tflops['float32'] or 0) * 1e12 or None, 'FLOP/s')}"),
        *[(f"decode tok/s, batch 1 ({d})", _si(v)) for d, v in th["decode_tok_s"].items()],
        *[(f"prefill tok/s ({d})", _si(v)) for d, v in th["prefill_tok_s"].items()],
        *[(f"training tok/s ({d})", _si(v)) for d, v in th["training_tok_s"].items()],
    ]
    _table("llmasos plan (estimates; see docs/eval.md)", rows)
