"""Weight-only quantization against bf16: size on disk, perplexity, logit drift and batch-1 decode speed.

    .venv/bin/python benchmarks/bench_quant.py                  # mid-size Llama (hidden 1024, 8 layers)
    .venv/bin/python benchmarks/bench_quant.py --layers 2 --repeats 1   # a quick check
    .venv/bin/python benchmarks/bench_quant.py --kernels        # the linear-layer microbenchmark only

The model is a random-weight bf16 Llama (vocabulary 32000, hidden 1024, MLP 3072), built once and cached in
`--out-dir`. Its perplexity is meaningless in absolute terms (a random model is near the vocabulary size);
what matters is the change against bf16, and the logit differences on the same inputs. Decode speed runs
through `llmasos.LLM` (128 prompt tokens, 128 generated, greedy, EOS ignored); the variants take turns so
background load hits them alike, and the median of `--repeats` is kept.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
VOCAB = 32000
SHAPE = dict(hidden_size=1024, intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8)
VARIANTS = {"bf16": None, "int8": (8, 128), "int4-g128": (4, 128)}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- checkpoints -----------------------------------------------------------------------------------------
def ensure_models(out_dir: Path, layers: int) -> dict[str, Path]:
    """The bf16 checkpoint and its quantized versions, each built once and reused."""
    from llmasos.compress.quantize import quantize_model, save_quantized
    from llmasos.models.loader import load_model
    from llmasos.models.random_checkpoint import build_random_checkpoint

    root = out_dir / "ckpt" / f"llama-quant-L{layers}-V{VOCAB}"
    dirs = {name: root / name for name in VARIANTS}
    if not (dirs["bf16"] / ".complete").is_file():
        log(f"building the bf16 random checkpoint in {dirs['bf16']}")
        build_random_checkpoint(dirs["bf16"], "llama", preset="bench", vocab_size=VOCAB, dtype=torch.bfloat16,
                                with_tokenizer=False, num_hidden_layers=layers, **SHAPE)
        (dirs["bf16"] / ".complete").write_text("ok")
    for name, spec in VARIANTS.items():
        if spec is None or (dirs[name] / ".complete").is_file():
            continue
        log(f"quantizing to {name}")
        model, src = load_model(dirs["bf16"], "bfloat16")
        save_quantized(quantize_model(model, bits=spec[0], group_size=spec[1]), dirs[name], src)
        (dirs[name] / ".complete").write_text("ok")
    return dirs


def disk_mb(d: Path) -> float:
    return sum(p.stat().st_size for p in d.glob("*.safetensors")) / 1e6


# -- quality ---------------------------------------------------------------------------------------------
def fixed_texts(n: int = 8, length: int = 256, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, VOCAB) for _ in range(length)] for _ in range(n)]


def quality(d: Path, texts: list[list[int]], ref_logits: torch.Tensor | None) -> tuple[dict, torch.Tensor]:
    from llmasos.models.loader import load_model

    model, _ = load_model(d, "bfloat16")
    try:
        from llmasos.eval.perplexity import perplexity

        ppl = perplexity(model, texts, max_length=len(texts[0]), batch_size=4).corpus_ppl
    except ImportError:  # before the eval module existed: mean token NLL by hand
        with torch.inference_mode():
            logits = model(torch.tensor(texts))[:, :-1].float()
        ppl = F.cross_entropy(logits.flatten(0, 1), torch.tensor(texts)[:, 1:].flatten()).exp().item()
    with torch.inference_mode():
        logits = model(torch.tensor(texts[:2])).float()
    out = {"ppl": ppl, "logit_std": logits.std().item()}
    if ref_logits is not None:
        diff = (logits - ref_logits).abs()
        out |= {"logit_max_diff": diff.max().item(), "logit_mean_diff": diff.mean().item(),
                "top1_agree": (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()}
    del model
    return out, logits


# -- speed -----------------------------------------------------------------------------------------------
def decode_speed(llm, prompt: list[int], n_out: int) -> float:  # noqa: ANN001 - llmasos.LLM
    """Decode tokens/s: (generate 1 token) vs (generate n_out), so the prompt's prefill cancels out."""
    from llmasos import SamplingParams

    def run(n: int) -> float:
        t0 = time.perf_counter()
        llm.generate([prompt], SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))
        return time.perf_counter() - t0

    t1, tn = run(1), run(n_out)
    return (n_out - 1) / max(tn - t1, 1e-9)


def kernel_microbench(threads: int, copies: int = 24) -> None:
    """Per-call time of one linear layer at 1..16 rows, weights cycled through `copies` copies so they come
    from memory (not cache), as in a real decode step."""
    from llmasos.ops import native_kernels
    from llmasos.ops.quant_linear import QuantLinear, quant_kernels

    torch.set_num_threads(threads)
    bf16k, qk = native_kernels(), quant_kernels()

    def best_us(fns: list) -> float:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for f in fns:
                f()
            best = min(best, (time.perf_counter() - t0) / len(fns))
        return best * 1e6

    print(f"linear layer, microseconds per call ({threads} threads); 'deq+mm' = expand to bf16, then oneDNN")
    for n, k in [(3072, 1024), (1024, 3072)]:
        torch.manual_seed(0)
        lins = [torch.nn.Linear(k, n, bias=False).to(torch.bfloat16) for _ in range(copies)]
        q8 = [QuantLinear.from_linear(lin, 8) for lin in lins]
        q4 = [QuantLinear.from_linear(lin, 4, 128) for lin in lins]
        t8 = [(q.qweight, q.scales.to(torch.bfloat16)) for q in q8]
        for rows in (1, 4, 8, 16):
            x = torch.randn(rows, k, dtype=torch.bfloat16)
            r: dict[str, float] = {}
            with torch.inference_mode():
                r["bf16 oneDNN"] = best_us([lambda lin=lin, x=x: F.linear(x, lin.weight) for lin in lins])
                if bf16k is not None and rows <= 4:
                    r["bf16 ours"] = best_us([lambda lin=lin, x=x: bf16k.bf16_linear(x, lin.weight) for lin in lins])
                r["int8 torch"] = best_us([lambda t=t, x=x: torch.ops.aten._weight_int8pack_mm(x, *t) for t in t8])
                if qk is not None:
                    r["int8 ours"] = best_us([lambda q=q, x=x: qk.int8_linear(x, q.qweight, q.scales) for q in q8])
                    r["int4 ours"] = best_us([lambda q=q, x=x: qk.int4_linear(x, q.qweight, q.scales, q.mins, 128)
                                              for q in q4])
                    r["int8 deq+mm"] = best_us([lambda q=q, x=x: F.linear(x, qk.int8_dequantize(q.qweight, q.scales))
                                                for q in q8])
                    r["int4 deq+mm"] = best_us([lambda q=q, x=x: F.linear(
                        x, qk.int4_dequantize(q.qweight, q.scales, q.mins, 128)) for q in q4])
            print(f"  {n}x{k} rows={rows:2d}  " + "  ".join(f"{name} {us:6.0f}" for name, us in r.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=8, help="transformer layers of the random model")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=3, help="decode runs per variant (median kept)")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--output", type=int, default=128)
    p.add_argument("--kernels", action="store_true", help="only the linear-layer microbenchmark")
    p.add_argument("--out-dir", type=Path, default=REPO / "bench_out")
    args = p.parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    if args.kernels:
        kernel_microbench(threads)
        return 0

    from llmasos import LLM

    dirs = ensure_models(args.out_dir, args.layers)
    texts = fixed_texts()
    rows: dict[str, dict] = {}
    ref = None
    for name, d in dirs.items():
        rows[name], logits = quality(d, texts, ref)
        rows[name]["size_mb"] = disk_mb(d)
        ref = logits if ref is None else ref
    llms = {name: LLM(d, dtype="bfloat16", num_threads=threads, kv_cache_memory=64 << 20) for name, d in dirs.items()}
    prompt = fixed_texts(1, args.prompt, seed=1)[0]
    for llm in llms.values():
        decode_speed(llm, prompt[:16], 4)  # warm-up: kernels built, caches touched
    speeds: dict[str, list[float]] = {name: [] for name in llms}
    for _ in range(max(1, args.repeats)):
        for name, llm in llms.items():  # round-robin: background noise hits every variant alike
            speeds[name].append(decode_speed(llm, prompt, args.output))
    for name in llms:
        rows[name]["tok_s"] = statistics.median(speeds[name])

    base = rows["bf16"]
    print(f"\nrandom-weight Llama, {args.layers} layers, hidden 1024, vocab {VOCAB}; {threads} threads; "
          f"decode {args.prompt} in / {args.output} out, batch 1, median of {args.repeats}; "
          f"bf16 logit std {base['logit_std']:.3f}, load average {__import__('os').getloadavg()[0]:.1f}")
    print(f"{'variant':<11}{'disk MB':>9}{'x':>6}{'ppl':>10}{'ppl chg':>9}{'logit max|d|':>13}"
          f"{'mean|d|':>9}{'top1':>7}{'tok/s':>8}{'x':>6}")
    for name, r in rows.items():
        print(f"{name:<11}{r['size_mb']:9.1f}{base['size_mb'] / r['size_mb']:6.2f}{r['ppl']:10.1f}"
              f"{(r['ppl'] / base['ppl'] - 1) * 100:8.2f}%{r.get('logit_max_diff', 0):13.3f}"
              f"{r.get('logit_mean_diff', 0):9.4f}{r.get('top1_agree', 1) * 100:6.1f}%"
              f"{r['tok_s']:8.1f}{r['tok_s'] / base['tok_s']:6.2f}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench_quant_latest.json").write_text(json.dumps(
        {"layers": args.layers, "threads": threads, "loadavg": list(__import__("os").getloadavg()),
         "rows": rows, "speeds": speeds}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
