"""Prefill attention for long prompts (RAG-sized contexts): our tiled kernel against torch's fused SDPA.

    .venv/bin/python benchmarks/bench_attention.py                     # 128 .. 8192 tokens, 2 threads
    .venv/bin/python benchmarks/bench_attention.py --lengths 2048,4096,8192 --threads 1,2

One causal prompt of L tokens, the bench model's heads (16 query / 8 KV heads, head dim 64) and SmolLM2's
(9 / 3, 64), bf16. Baseline: what the engine would run without our kernel (`models.attention.
_prefill_attention_torch`: torch's scaled_dot_product_attention with K/V repeated per query head, which takes
its fused flash kernel). Each is timed best-of-`--repeats`, alternating, in one process; the ratio is
torch time / ours. GFLOP/s counts the causal half of QK^T and PV (2 * 2 * L^2/2 * D per head).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import cpu_model  # noqa: E402

SHAPES = {"bench (16/8 heads)": (16, 8, 64), "SmolLM2 (9/3 heads)": (9, 3, 64)}


def best_time(fn, repeats: int) -> float:  # noqa: ANN001
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="128,512,1024,2048,4096,8192")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from llmasos.models.attention import _prefill_attention_torch
    from llmasos.ops import native_kernels

    ext = native_kernels()
    if ext is None:
        sys.exit("native kernels unavailable on this CPU (AVX512-BF16 needed)")
    console = Console()
    console.print(f"CPU: {cpu_model()}; torch {torch.__version__}")
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        table = Table(title=f"prefill attention, bf16, {threads} thread(s)")
        for col in ("heads", "tokens", "torch SDPA ms", "ours ms", "ours GFLOP/s", "ours / torch"):
            table.add_column(col, justify="right")
        for label, (hq, hkv, d) in SHAPES.items():
            for length in [int(x) for x in args.lengths.split(",")]:
                g = torch.Generator().manual_seed(length)
                q = torch.randn(length, hq, d, generator=g).to(torch.bfloat16)
                k = torch.randn(length, hkv, d, generator=g).to(torch.bfloat16)
                v = torch.randn(length, hkv, d, generator=g).to(torch.bfloat16)
                scale = d**-0.5
                group = hq // hkv
                with torch.inference_mode():
                    t_torch = best_time(lambda q=q, k=k, v=v, s=scale, g=group: _prefill_attention_torch(q, k, v, g, s),
                                        args.repeats)
                    t_ours = best_time(lambda q=q, k=k, v=v, s=scale: ext.prefill_attention(q, k, v, s), args.repeats)
                flops = 2 * 2 * (length * length / 2) * d * hq
                rows.append(dict(threads=threads, heads=label, tokens=length, torch_ms=t_torch * 1e3,
                                 ours_ms=t_ours * 1e3, ours_gflops=flops / t_ours / 1e9, speedup=t_torch / t_ours))
                r = rows[-1]
                table.add_row(label, str(length), f"{r['torch_ms']:.1f}", f"{r['ours_ms']:.1f}",
                              f"{r['ours_gflops']:.0f}", f"{r['speedup']:.2f}x")
        console.print(table)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
