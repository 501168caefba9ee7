"""The default model (SmolLM2-135M-Instruct, GGUF) next to the built-in model: held-out perplexity, decode speed
at 1 and 16 streams, and real replies, in one run (the figures in docs/models.md).

    .venv/bin/python benchmarks/bench_models.py --data runs/builtin/data --threads 2

Held-out text: the validation split of the built-in recipe's pre-training data (`--data`: a prepared data
directory of `llmasos train recipe builtin`; WordNet glosses in sentences, Python reference prose, rendered
dialogues; split off by document before training, never trained on), decoded back to text. Each model scores
the same text with its own tokenizer, so besides per-token perplexity the table gives bits per byte, which
compares across tokenizers.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import cpu_model  # noqa: E402

QUESTIONS = [
    ("support", "I want a refund for my order, it arrived broken."),
    ("definition", "What does the word harbor mean?"),
    ("title", "Write a title for a blog post about saving energy at home."),
    ("continuation", "Continue the story: The old lighthouse keeper opened the door and"),
    ("Chinese", "中国的首都是哪里？"),
]


def held_out_texts(data: Path, windows: int = 64, length: int = 256) -> list[str]:
    from transformers import AutoTokenizer

    from llmasos.train.data import TokenDataset

    meta_tok = AutoTokenizer.from_pretrained(str(Path(__file__).resolve().parent.parent / "src/llmasos/builtin/model"))
    val = TokenDataset(data, "val")
    n = min(len(val.tokens), windows * length)
    return [meta_tok.decode(val.tokens[i : i + length].astype("int64").tolist()) for i in range(0, n - 1, length)]


def decode_speed(llm, n: int, prompt: int = 128, gen: int = 128) -> float:  # noqa: ANN001
    from llmasos import SamplingParams

    eng = llm.engine
    params = SamplingParams(max_tokens=gen, temperature=0, ignore_eos=True)
    ids = [eng.add_request([1000 + i] + list(range(2000, 2000 + prompt - 1)), params) for i in range(n)]
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    tokens = 0
    while eng.has_unfinished_requests():
        for out in eng.step():
            if out.outputs[0].delta_token_ids:
                now = time.perf_counter()
                first.setdefault(out.request_id, now)
                last[out.request_id] = now
                tokens += len(out.outputs[0].delta_token_ids)
    start, end = max(first[r] for r in ids), max(last[r] for r in ids)
    return (tokens - n) / (end - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="prepared data directory of the built-in recipe")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    from llmasos import LLM, SamplingParams
    from llmasos.eval.perplexity import text_perplexity
    from llmasos.models.default_model import BUILTIN_NAME
    from llmasos.models.loader import load_model

    torch.set_num_threads(args.threads)
    console = Console(width=160)
    console.print(f"CPU: {cpu_model()}; threads {args.threads}; torch {torch.__version__}")
    texts = held_out_texts(args.data)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    table = Table(title=f"held-out text: {len(texts)} windows, {nbytes} bytes")
    for col in ("model", "params", "ppl (own tokens)", "bits/byte", "load s", "decode tok/s, 1", "decode tok/s, 16"):
        table.add_column(col, justify="right")
    replies: dict[str, list[str]] = {}
    for label, name in (("SmolLM2-135M-Instruct (default)", None), ("built-in", BUILTIN_NAME)):
        t0 = time.perf_counter()
        llm = LLM(name, num_threads=args.threads)
        load_s = time.perf_counter() - t0
        model, _ = load_model(name, dtype="float32")
        res = text_perplexity(model, llm.tokenizer, texts, max_length=512)
        bpb = res.nll / math.log(2) / nbytes
        speed1, speed16 = decode_speed(llm, 1), decode_speed(llm, 16)
        table.add_row(label, f"{model.config.num_params / 1e6:.1f}M", f"{res.corpus_ppl:.2f}", f"{bpb:.3f}",
                      f"{load_s:.1f}", f"{speed1:.0f}", f"{speed16:.0f}")
        outs = llm.chat([[{"role": "user", "content": q}] for _, q in QUESTIONS],
                        SamplingParams(max_tokens=80, temperature=0, repetition_penalty=1.1))
        replies[label] = [o.text.strip() for o in outs]
    console.print(table)
    for i, (kind, q) in enumerate(QUESTIONS):
        console.print(f"\n[bold]{kind}[/bold]: {q}")
        for label, r in replies.items():
            console.print(f"  [cyan]{label}[/cyan]: {r[i]}")


if __name__ == "__main__":
    main()
