"""Distillation and pruning against their source model: parameters, disk size, held-out perplexity, decode speed.

    .venv/bin/python benchmarks/bench_compress.py                        # default small size (a few minutes)
    .venv/bin/python benchmarks/bench_compress.py --hidden 128 --layers 4 --pretrain-steps 60   # a quick check

There is no trained built-in model to compress yet, so the benchmark trains one briefly: a byte-level BPE
tokenizer and a small Llama on this repository's own Markdown docs (real English text, a held-out 10% split by
document), then

- distils it into a student with every other layer (KL + CE, initialised from the teacher's layers);
- prunes it by Wanda at 50% (zeroed weights: a quality figure, not a speed one);
- prunes it structurally (half of the KV groups and FFN channels) and recovers with a short fine-tune.

Perplexity is on the held-out split, the same windows for every variant. Decode speed is batch 1 through
`llmasos.LLM` (16 prompt tokens, `--tokens` generated, greedy, EOS ignored, median of `--repeats`). Models this
small are dominated by per-op overhead, not by weight bytes, so speed ratios understate what larger models get.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare(work: Path, vocab: int) -> Path:
    from llmasos.train.data import prepare_dataset, read_texts
    from llmasos.train.tokenizer import train_tokenizer

    data = work / "data"
    if (data / "meta.json").is_file():
        return data
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "benchmarks").glob("*.md"))]
    texts = [t for d in docs for t in read_texts(d)]
    tok = train_tokenizer(texts, vocab, work / "tok")
    prepare_dataset(texts, tok, data, val_fraction=0.1, tokenizer_path=str(work / "tok"))
    return data


def train_teacher(work: Path, data: Path, args: argparse.Namespace) -> Path:
    from llmasos.train.config import TrainConfig
    from llmasos.train.pretrain import PretrainSpec, pretrain

    out = work / "teacher"
    if (out / "model" / "config.json").is_file():
        return out / "model"
    spec = PretrainSpec(
        model=dict(family="llama", hidden_size=args.hidden, intermediate_size=args.hidden * 3,
                   num_hidden_layers=args.layers, num_attention_heads=args.heads,
                   num_key_value_heads=args.heads // 2, max_position_embeddings=256, tie_word_embeddings=True),
        data=str(data),
        train=TrainConfig(out_dir=str(out), max_steps=args.pretrain_steps, batch_size=8, seq_len=args.seq_len,
                          lr=2e-3, warmup_steps=10, eval_interval=args.pretrain_steps, eval_batches=4,
                          ckpt_interval=args.pretrain_steps, precision="fp32", num_threads=args.threads))
    pretrain(spec, progress=False)
    return out / "model"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/llmasos-bench-compress"))
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--pretrain-steps", type=int, default=200)
    ap.add_argument("--distill-steps", type=int, default=150)
    ap.add_argument("--recover-steps", type=int, default=75)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = ap.parse_args()

    from llmasos.compress.common import (
        RunSettings,
        count_params,
        decode_tok_s,
        disk_bytes,
        eval_ppl,
        load_fp32,
        token_windows,
    )
    from llmasos.compress.distill import KDConfig, distill
    from llmasos.compress.prune_job import prune

    work = args.out_dir / f"h{args.hidden}-l{args.layers}-v{args.vocab}"
    t0 = time.perf_counter()
    data = prepare(work, args.vocab)
    teacher = train_teacher(work, data, args)
    log(f"teacher ready in {time.perf_counter() - t0:.0f}s")
    run = dict(batch_size=8, seq_len=args.seq_len, lr=1e-3, warmup_steps=5, precision="fp32",
               num_threads=args.threads)
    variants = {"teacher / dense": teacher}
    for old in ["student", "wanda", "struct", "struct_rec"]:  # the teacher is cached; the variants are remade
        shutil.rmtree(work / old, ignore_errors=True)
    t = time.perf_counter()
    distill(teacher, data, work / "student", KDConfig(temperature=2.0, alpha=0.5),
            RunSettings(steps=args.distill_steps, **run), keep_every=2)
    variants["distilled (every 2nd layer)"] = work / "student"
    log(f"distilled in {time.perf_counter() - t:.0f}s")
    t = time.perf_counter()
    prune(teacher, "wanda", data, work / "wanda", sparsity=0.5, run=RunSettings(**run))
    variants["wanda 50% (zeroed)"] = work / "wanda"
    prune(teacher, "structured", data, work / "struct", heads_keep_ratio=0.5, ffn_keep_ratio=0.5,
          run=RunSettings(**run))
    variants["structured 1/2 heads, 1/2 FFN"] = work / "struct"
    prune(teacher, "structured", data, work / "struct_rec", heads_keep_ratio=0.5, ffn_keep_ratio=0.5,
          recover_steps=args.recover_steps, run=RunSettings(**run))
    variants[f"  + recovery ({args.recover_steps} steps)"] = work / "struct_rec"
    log(f"pruned in {time.perf_counter() - t:.0f}s")

    val = token_windows(data, "val", args.seq_len, 64)
    rows = []
    for name, d in variants.items():
        model, _, _ = load_fp32(d)
        rows.append(dict(variant=name, params=count_params(model), disk_mb=disk_bytes(d) / 1e6,
                         ppl=eval_ppl(model, val), nonzero=sum(int((p != 0).sum()) for p in model.parameters())))
    # speed last, variants interleaved per repeat would be fairer; one model at a time keeps memory low
    for row, d in zip(rows, variants.values(), strict=True):
        row["tok_s"] = decode_tok_s(d, new_tokens=args.tokens, repeats=args.repeats, num_threads=args.threads)
    base = rows[0]
    print(f"\nheld-out ppl on {len(val)} windows of {args.seq_len} tokens; decode batch 1, {args.tokens} tokens, "
          f"bf16, {args.threads or 'all'} threads\n")
    print("| variant | params | non-zero | disk MB | ppl | decode tok/s | speed vs dense |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['params'] / 1e6:.2f}M | {r['nonzero'] / 1e6:.2f}M | {r['disk_mb']:.1f} | "
              f"{r['ppl']:.2f} | {r['tok_s']:.0f} | {r['tok_s'] / base['tok_s']:.2f}x |")
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
