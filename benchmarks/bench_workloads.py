"""The workloads of the benchmark (A, B, C, E, F), each a function of a `Ctx`, plus a one-step decode profile.

Every workload returns a `WorkloadResult`; an engine that fails or is missing is recorded in it, never raised.
"""

from __future__ import annotations

import cProfile
import gc
import io
import math
import pstats
import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from bench_common import (
    Check,
    Column,
    EngineResult,
    Sizes,
    WorkloadResult,
    failed,
    kv_bytes_per_token,
    linear_flops,
    measure_matmul_gflops,
    measure_memory_bandwidth,
    module_available,
    percentile,
    random_tokens,
    ratio,
    run_repeated,
    skipped,
    uniform_prompts,
    variable_workload,
    weight_bytes_read_per_token,
)
from bench_runners import (
    BatchRun,
    HFRunner,
    OursRunner,
    ProgressFn,
    gguf_file_type,
    llama_cpp_decode,
    vllm_run,
    vllm_subprocess_run,
)
from bench_workloads_gguf import workload_g, workload_q
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

OURS = "llmasos"
HF_GEN = "hf generate (static)"
HF_CB = "hf generate_batch (CB)"
VLLM = "vllm (cpu)"
LLAMA_CPP = "llama.cpp"
TARGET_C_TOK_S = 23.0  # llama.cpp bf16 on the quiet reference machine
TARGET_MBU = 0.85


@dataclass
class Options:
    """Everything the workloads need to know from the command line."""

    repeats: int = 1
    kv_cache_memory: int | None = None
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 1024
    hf_cb_max_batch_tokens: int | None = None
    skip_hf: bool = False
    gguf: list[Path] = field(default_factory=list)
    llama_cpp_bin: Path | None = None  # a directory with llama.cpp's llama-batched-bench (G, Q)
    vllm_python: Path | None = None  # the python of a virtual environment with vLLM (A)


@dataclass
class Ctx:
    """Shared state of one benchmark run: the checkpoint, the engines (built once, reused), the console."""

    ckpt: Path
    shape: dict[str, int]
    sizes: Sizes
    opts: Options
    console: Console
    threads: int = 1
    _ours: OursRunner | None = None
    _hf: HFRunner | None = None
    _hf_error: BaseException | None = None
    _warm: set[tuple[str, int]] = field(default_factory=set)
    _membw: dict[int, dict[str, float]] = field(default_factory=dict)
    _matmul: dict[int, float] = field(default_factory=dict)

    def set_threads(self, threads: int) -> None:
        self.threads = threads
        torch.set_num_threads(threads)

    # engines --------------------------------------------------------------------------------------------
    def ours(self) -> OursRunner:
        if self._ours is None:
            with self.spinner("loading llmasos engine"):
                self._ours = self.new_ours()
        torch.set_num_threads(self.threads)
        if (OURS, self.threads) not in self._warm:
            s = self.sizes
            self._ours.warmup(uniform_prompts(s.warm_requests, s.warm_prompt, seed=99), s.warm_output)
            self._warm.add((OURS, self.threads))
        return self._ours

    def new_ours(self, **overrides: Any) -> OursRunner:
        kw: dict[str, Any] = dict(kv_cache_memory=self.opts.kv_cache_memory, max_num_seqs=self.opts.max_num_seqs,
                                  max_num_batched_tokens=self.opts.max_num_batched_tokens)
        kw.update(overrides)
        return OursRunner(self.ckpt, self.threads, **kw)

    def hf(self) -> HFRunner:
        """The transformers model (raises the load error again on every call if it could not be loaded)."""
        if self.opts.skip_hf:
            raise RuntimeError("skipped by --skip-hf")
        if self._hf_error is not None:
            raise self._hf_error
        if self._hf is None:
            try:
                with self.spinner("loading transformers model"):
                    self._hf = HFRunner(self.ckpt, self.threads)
            except Exception as exc:
                self._hf_error = exc
                raise
        torch.set_num_threads(self.threads)
        if ("hf", self.threads) not in self._warm:
            s = self.sizes
            self._hf.generate(uniform_prompts(s.warm_requests, s.warm_prompt, seed=99), [s.warm_output] * s.warm_requests)
            self._warm.add(("hf", self.threads))
        return self._hf

    def matmul_peak(self) -> float:
        if self.threads not in self._matmul:
            with self.spinner(f"measuring bf16 matmul speed ({self.threads} threads)"):
                self._matmul[self.threads] = measure_matmul_gflops(self.shape)
        return self._matmul[self.threads]

    def membw(self) -> dict[str, float]:
        if self.threads not in self._membw:
            with self.spinner(f"measuring memory bandwidth ({self.sizes.membw_bytes >> 20} MiB, {self.threads} threads)"):
                self._membw[self.threads] = measure_memory_bandwidth(self.sizes.membw_bytes)
        return self._membw[self.threads]

    # progress -------------------------------------------------------------------------------------------
    def _progress(self) -> Progress:
        return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=self.console, transient=True, refresh_per_second=2)

    @contextmanager
    def phase(self, label: str, total: int | None) -> Iterator[ProgressFn]:
        t0 = time.perf_counter()
        if not self.console.is_terminal:  # live progress bars only render on a terminal
            self.console.log(f"{label} ...")
        with self._progress() as prog:
            task = prog.add_task(label, total=total)
            yield lambda n: prog.advance(task, n)
        self.console.log(f"{label}: {time.perf_counter() - t0:.1f}s")

    @contextmanager
    def spinner(self, label: str) -> Iterator[None]:
        with self.phase(label, None):
            yield


# -- helpers ------------------------------------------------------------------------------------------------
def throughput_metrics(run: BatchRun, prompt_tokens: int) -> dict[str, float]:
    m = {
        "out_tok_s": run.output_tokens / run.elapsed,
        "total_tok_s": (run.output_tokens + prompt_tokens) / run.elapsed,
        "elapsed_s": run.elapsed,
        "output_tokens": float(run.output_tokens),
    }
    if run.ttfts:
        m["ttft_mean_ms"] = 1e3 * statistics.fmean(run.ttfts)
    # Pure-decode phase: from the moment the last request got its first token (every prompt is in) to the last
    # token, per step. Only meaningful when all requests want the same number of tokens (workload A).
    lens = {len(t) for t in run.token_ids}
    firsts, lasts = [t for t in run.first_token_times if t == t], [t for t in run.last_token_times if t == t]
    if len(lens) == 1 and (n := lens.pop()) > 1 and firsts and lasts and max(lasts) > max(firsts):
        m["decode_step_ms"] = 1e3 * (max(lasts) - max(firsts)) / (n - 1)
    for k in ("preemptions", "steps", "generated_incl_padding"):
        if k in run.extra:
            m[k] = float(run.extra[k])
    return m


def agreement(a: list[list[int]], b: list[list[int]]) -> tuple[float, float]:
    """(share of requests whose first token agrees, mean share of each output matching before divergence)."""
    first = prefix = 0.0
    for x, y in zip(a, b, strict=True):
        first += bool(x and y and x[0] == y[0])
        n = 0
        while n < min(len(x), len(y)) and x[n] == y[n]:
            n += 1
        prefix += n / max(len(x), 1)
    return first / len(a), prefix / len(a)


THROUGHPUT_COLUMNS = [
    Column("out_tok_s", "output tok/s"),
    Column("total_tok_s", "prompt+output tok/s"),
    Column("elapsed_s", "wall s", "{:.2f}"),
    Column("ttft_mean_ms", "mean TTFT ms", "{:.0f}"),
    Column("decode_step_ms", "decode ms/step", "{:.0f}"),
    Column("steps", "steps", "{:.0f}"),
    Column("preemptions", "preempt", "{:.0f}"),
]


def _throughput_workload(ctx: Ctx, key: str, title: str, prompts: list[list[int]], out_lens: list[int],
                         params: dict[str, Any]) -> WorkloadResult:
    """A and B: all requests at once; ours vs HF generate vs HF continuous batching (vs vLLM if present)."""
    res = WorkloadResult(key, title, ctx.threads, params, THROUGHPUT_COLUMNS, primary="out_tok_s")
    prompt_tokens = sum(len(p) for p in prompts)
    total_out = sum(out_lens)
    last: dict[str, BatchRun] = {}

    def timed(name: str, fn: Callable[[ProgressFn], BatchRun], total: int) -> Callable[[], dict[str, float]]:
        def run() -> dict[str, float]:
            gc.collect()
            with ctx.phase(f"{key} {name}", total) as progress:
                last[name] = fn(progress)
            return throughput_metrics(last[name], prompt_tokens)
        return run

    runners: dict[str, Callable[[], dict[str, float]]] = {}
    pre: dict[str, EngineResult] = {}
    runners[OURS] = timed(OURS, lambda p: ctx.ours().run(prompts, out_lens, p), total_out)
    try:
        hf = ctx.hf()
        runners[HF_GEN] = timed(HF_GEN, lambda p: hf.generate(prompts, out_lens, p), max(out_lens) * len(prompts))
        reason = hf.cb_support()
        if reason:
            pre[HF_CB] = skipped(HF_CB, reason)
        else:
            cfg = hf.cb_config(prompts, out_lens, ctx.opts.hf_cb_max_batch_tokens, ctx.opts.max_num_seqs)
            try:
                with ctx.spinner(f"{key} {HF_CB} warm-up"):
                    s = ctx.sizes
                    warm = uniform_prompts(s.warm_requests, s.warm_prompt, seed=98)
                    hf.generate_batch(warm, [s.warm_output] * len(warm), cfg)
                runners[HF_CB] = timed(HF_CB, lambda p: hf.generate_batch(prompts, out_lens, cfg, p), len(prompts))
            except Exception as exc:
                pre[HF_CB] = failed(HF_CB, exc)
    except Exception as exc:
        pre[HF_GEN] = failed(HF_GEN, exc) if not ctx.opts.skip_hf else skipped(HF_GEN, "--skip-hf")
        pre[HF_CB] = EngineResult(HF_CB, pre[HF_GEN].status, pre[HF_GEN].note)
    if ctx.opts.vllm_python is not None:
        runners[VLLM] = timed(VLLM, lambda p: vllm_subprocess_run(ctx.opts.vllm_python, ctx.ckpt, ctx.threads,
                                                                  prompts, out_lens), len(prompts))
    elif module_available("vllm"):
        runners[VLLM] = timed(VLLM, lambda p: vllm_run(ctx.ckpt, ctx.threads, prompts, out_lens), len(prompts))
    else:
        pre[VLLM] = skipped(VLLM, "skipped: not installed (--vllm-python runs it from its own environment)")
    pre[LLAMA_CPP] = skipped(LLAMA_CPP, "skipped: not installed" if not module_available("llama_cpp")
                             else "skipped: llama-cpp-python has no batched multi-sequence API (see C)")

    try:
        measured = run_repeated(runners, ctx.opts.repeats,
                                on_error=lambda n, e: ctx.console.log(f"[red]{key} {n} failed: {e}"))
    finally:
        if HF_CB in runners and ctx._hf is not None:
            ctx._hf.close_cb()
    order = [OURS, HF_GEN, HF_CB, VLLM, LLAMA_CPP]
    res.engines = [measured.get(n) or pre[n] for n in order if n in measured or n in pre]
    ours = res.engine(OURS)
    for name in (HF_GEN, HF_CB, VLLM):
        other = res.engine(name)
        if other is not None and other.ok:
            res.ratios[f"ours / {name}"] = ratio(ours.get("out_tok_s") if ours else None, other.get("out_tok_s"))
    if OURS in last and HF_GEN in last:
        first, prefix = agreement(last[OURS].token_ids, last[HF_GEN].token_ids)
        res.notes.append(f"greedy agreement with HF generate: first token {first:.0%}, matching prefix {prefix:.0%} "
                         "(random bf16 weights have near-tied logits, so late divergence is expected)")
    return res


# -- A ------------------------------------------------------------------------------------------------------
def workload_a(ctx: Ctx) -> WorkloadResult:
    s = ctx.sizes
    prompts = uniform_prompts(s.a_requests, s.a_prompt, seed=1)
    res = _throughput_workload(
        ctx, "A", f"A: {s.a_requests} requests x {s.a_prompt} prompt / {s.a_output} output tokens",
        prompts, [s.a_output] * s.a_requests,
        {"requests": s.a_requests, "prompt": s.a_prompt, "output": s.a_output, "seed": 1})
    r = res.ratios.get(f"ours / {HF_GEN}")
    res.checks.append(Check("A throughput vs HF generate", ">= 2.5x", _x(r), None if r is None else r >= 2.5))
    v = res.ratios.get(f"ours / {VLLM}")
    res.checks.append(Check("A throughput vs vLLM-CPU", ">= 1.3x", _x(v), None if v is None else v >= 1.3))
    hf = res.engine(HF_GEN)
    if hf is not None and hf.ok:
        # What this CPU allows at all: the workload's matmuls alone, at the best bf16 matmul rate measured now.
        # Every prompt token and every generated token but the last goes through the layers.
        flops = linear_flops(ctx.shape, layer_tokens=s.a_requests * (s.a_prompt + s.a_output - 1),
                             sampled_tokens=s.a_requests * s.a_output)
        peak = ctx.matmul_peak()
        floor_s = flops / (peak * 1e9)
        ceiling = hf.get("elapsed_s") / floor_s if hf.get("elapsed_s") else None
        res.params.update({"linear_tflop": flops / 1e12, "matmul_peak_gflops": peak, "matmul_floor_s": floor_s})
        res.notes.append(
            f"matmul floor: the workload's linear layers are {flops / 1e12:.2f} TFLOP; at the best bf16 matmul rate "
            f"measured in this run ({peak:.0f} GFLOP/s, prepacked oneDNN, 1024x1024x3072) they alone take "
            f"{floor_s:.1f} s, so no engine can beat HF generate by more than {_x(ceiling)} here")
        res.checks.append(Check("A ceiling on this CPU (matmuls only)", "informational", _x(ceiling), None))
    return res


# -- B ------------------------------------------------------------------------------------------------------
def workload_b(ctx: Ctx) -> WorkloadResult:
    s = ctx.sizes
    prompts, out_lens = variable_workload(s.b_requests, s.b_prompt, s.b_output, seed=0)
    res = _throughput_workload(
        ctx, "B", f"B: {s.b_requests} requests, prompt {s.b_prompt[0]}-{s.b_prompt[1]}, "
                  f"output {s.b_output[0]}-{s.b_output[1]} (seed 0)",
        prompts, out_lens,
        {"requests": s.b_requests, "prompt_range": s.b_prompt, "output_range": s.b_output, "seed": 0,
         "prompt_tokens": sum(map(len, prompts)), "output_tokens": sum(out_lens)})
    res.notes.append("HF generate pads to the longest prompt and generates max(output) tokens for every row; "
                     "only each request's own output length counts as useful tokens")
    return res


# -- C ------------------------------------------------------------------------------------------------------
def workload_c(ctx: Ctx) -> WorkloadResult:
    s = ctx.sizes
    prompt = uniform_prompts(1, s.c_prompt, seed=3)
    n = s.c_output
    columns = [Column("decode_tok_s", "decode tok/s"), Column("step_ms", "ms/token", "{:.1f}"),
               Column("mbu", "MBU", "{:.0%}"), Column("ttft_ms", "TTFT ms", "{:.0f}"),
               Column("e2e_s", "wall s", "{:.2f}")]
    res = WorkloadResult("C", f"C: one request, {s.c_prompt} prompt / {n} output tokens (decode speed)",
                         ctx.threads, {"prompt": s.c_prompt, "output": n, "seed": 3}, columns,
                         primary="decode_tok_s")
    bw = ctx.membw()
    ours = ctx.ours()
    total_w, streamed_w = weight_bytes_read_per_token(ours.model)
    kv_tok = kv_bytes_per_token(ctx.shape)
    avg_ctx = s.c_prompt + n / 2
    bytes_per_step = streamed_w + kv_tok * avg_ctx
    res.params.update({"weight_bytes_total": total_w, "weight_bytes_per_step": streamed_w,
                       "kv_bytes_per_token": kv_tok, "avg_context": avg_ctx, "bytes_per_step": bytes_per_step,
                       "membw_read_gbs": bw["read_gbs"], "membw_copy_gbs": bw["copy_gbs"]})

    def decode_metrics(run: BatchRun, start: float | None) -> dict[str, float]:
        first, last_t = run.first_token_times[0], run.last_token_times[0]
        rate = (n - 1) / (last_t - first) if last_t > first else math.nan
        m = {"decode_tok_s": rate, "step_ms": 1e3 / rate, "mbu": bytes_per_step * rate / (bw["read_gbs"] * 1e9),
             "e2e_s": run.elapsed}
        if run.ttfts:
            m["ttft_ms"] = 1e3 * run.ttfts[0]
        elif start is not None:
            m["ttft_ms"] = 1e3 * (first - start)
        return m

    def run_ours() -> dict[str, float]:
        with ctx.phase(f"C {OURS}", n) as progress:
            return decode_metrics(ours.run(prompt, [n], progress), None)

    runners: dict[str, Callable[[], dict[str, float]]] = {OURS: run_ours}
    pre: dict[str, EngineResult] = {}
    try:
        hf = ctx.hf()

        def run_hf() -> dict[str, float]:
            with ctx.phase(f"C {HF_GEN}", n) as progress:
                start = time.monotonic()
                return decode_metrics(hf.generate(prompt, [n], progress), start)
        runners[HF_GEN] = run_hf
    except Exception as exc:
        pre[HF_GEN] = failed(HF_GEN, exc) if not ctx.opts.skip_hf else skipped(HF_GEN, "--skip-hf")
    llama_rows: list[str] = []
    if not module_available("llama_cpp"):
        pre[LLAMA_CPP] = skipped(LLAMA_CPP, "skipped: not installed")
    elif not ctx.opts.gguf:
        pre[LLAMA_CPP] = skipped(LLAMA_CPP, "skipped: installed, but needs --gguf (GGUF exports of the checkpoint, "
                                            "see make_gguf.py)")
    for gguf in ctx.opts.gguf if module_available("llama_cpp") else []:
        name = f"{LLAMA_CPP} {gguf_file_type(gguf)}"
        llama_rows.append(name)

        def run_llama(gguf: Path = gguf, bf16: bool = name.endswith("BF16")) -> dict[str, float]:
            m = llama_cpp_decode(gguf, ctx.threads, prompt[0], n)
            m["step_ms"] = 1e3 / m["decode_tok_s"]
            if bf16:  # other types stream fewer bytes than the bf16 weights MBU counts
                m["mbu"] = bytes_per_step * m["decode_tok_s"] / (bw["read_gbs"] * 1e9)
            return m
        runners[name] = run_llama
    pre[VLLM] = skipped(VLLM, "skipped: not installed" if not module_available("vllm")
                        else "skipped: decode timing is wired for ours, HF and llama.cpp only")
    measured = run_repeated(runners, ctx.opts.repeats,
                            on_error=lambda name, e: ctx.console.log(f"[red]C {name} failed: {e}"))
    order = (OURS, HF_GEN, LLAMA_CPP, *llama_rows, VLLM)
    res.engines = [measured.get(k) or pre[k] for k in order if k in measured or k in pre]
    o = res.engine(OURS)
    for name in (HF_GEN, *llama_rows):
        other = res.engine(name)
        if other is not None and other.ok:
            res.ratios[f"ours / {name} (decode)"] = ratio(o.get("decode_tok_s") if o else None,
                                                         other.get("decode_tok_s"))
    res.notes.append(
        f"MBU = (streamed weights {streamed_w / 1e6:.0f} MB + KV {kv_tok / 1024:.0f} KiB/token x {avg_ctx:.0f} mean "
        f"context) / step time / read bandwidth {bw['read_gbs']:.1f} GB/s (torch sum over "
        f"{bw['size_mib']:.0f} MiB; copy: {bw['copy_gbs']:.1f} GB/s)")
    dec = o.get("decode_tok_s") if o else None
    mbu = o.get("mbu") if o else None
    same_run = res.ratios.get(f"ours / {LLAMA_CPP} BF16 (decode)")
    if same_run is not None:  # the real baseline ran here: compare with it, not with the reference figure
        res.checks.append(Check("C decode vs llama.cpp bf16", ">= 1.0x (same run)", _x(same_run), same_run >= 1.0))
    else:
        res.checks.append(Check("C decode vs llama.cpp bf16", f">= {TARGET_C_TOK_S:.0f} tok/s (quiet machine)",
                                "n/a" if dec is None else f"{dec:.1f} tok/s",
                                None if dec is None else dec >= TARGET_C_TOK_S))
    res.checks.append(Check("C memory-bandwidth utilisation", f"aim {TARGET_MBU:.0%}",
                            "n/a" if mbu is None else f"{mbu:.0%}", None if mbu is None else mbu >= TARGET_MBU))
    return res


# -- E ------------------------------------------------------------------------------------------------------
def workload_e(ctx: Ctx) -> WorkloadResult:
    s = ctx.sizes
    system = uniform_prompts(1, s.e_system, seed=5)[0]
    suffixes = uniform_prompts(s.e_apps + 1, s.e_suffix, seed=50)
    columns = [Column("ttft_mean_ms", "mean TTFT ms", "{:.0f}"), Column("ttft_p50_ms", "p50 TTFT ms", "{:.0f}"),
               Column("ttft_max_ms", "max TTFT ms", "{:.0f}"), Column("latency_mean_ms", "mean latency ms", "{:.0f}"),
               Column("cached_tokens_mean", "cached prompt tok", "{:.0f}")]
    res = WorkloadResult("E", f"E: {s.e_apps} apps, shared {s.e_system}-token system prompt + {s.e_suffix}-token "
                              f"suffix, {s.e_output} output tokens, sequential", ctx.threads,
                         {"apps": s.e_apps, "system": s.e_system, "suffix": s.e_suffix, "output": s.e_output},
                         columns, primary="ttft_mean_ms", primary_higher_is_better=False)
    on_name, off_name = f"{OURS} prefix cache on", f"{OURS} prefix cache off"
    engines: dict[str, OursRunner] = {}
    results: dict[str, EngineResult] = {}
    try:
        engines[on_name] = ctx.ours()
    except Exception as exc:
        results[on_name] = failed(on_name, exc)
    try:
        with ctx.spinner("E: loading a second llmasos engine with prefix caching off"):
            engines[off_name] = ctx.new_ours(enable_prefix_caching=False)
        w = ctx.sizes
        engines[off_name].warmup(uniform_prompts(w.warm_requests, w.warm_prompt, seed=99), w.warm_output)
    except Exception as exc:
        results[off_name] = failed(off_name, exc)
    samples: dict[str, list[BatchRun]] = {n: [] for n in engines}
    try:
        for name, eng in engines.items():
            try:
                eng.reset_prefix_cache()
                eng.run([system + suffixes[-1]], [s.e_output], app_id="warm", reset_cache=False)  # warms the cache
            except Exception as exc:
                results[name] = failed(name, exc)
        with ctx.phase("E sequential requests (on/off interleaved)", s.e_apps * len(engines)) as progress:
            for i in range(s.e_apps):
                for name, eng in engines.items():  # interleaved, so background noise hits both alike
                    if name in results:
                        continue
                    try:
                        samples[name].append(eng.run([system + suffixes[i]], [s.e_output], app_id=f"app{i}",
                                                     reset_cache=False))
                    except Exception as exc:
                        results[name] = failed(name, exc)
                    progress(1)
    finally:
        off = engines.pop(off_name, None)
        del off
        gc.collect()
    for name, runs in samples.items():
        if name in results or not runs:
            continue
        ttfts = [r.ttfts[0] for r in runs]
        results[name] = EngineResult(name, metrics={
            "ttft_mean_ms": 1e3 * statistics.fmean(ttfts), "ttft_p50_ms": 1e3 * percentile(ttfts, 50),
            "ttft_max_ms": 1e3 * max(ttfts), "latency_mean_ms": 1e3 * statistics.fmean(r.elapsed for r in runs),
            "cached_tokens_mean": statistics.fmean(r.extra.get("cached_prompt_tokens", 0) for r in runs)})
    res.engines = [results[n] for n in (on_name, off_name) if n in results]
    on, off_r = results.get(on_name), results.get(off_name)
    r = ratio(on.get("ttft_mean_ms") if on else None, off_r.get("ttft_mean_ms") if off_r else None)
    res.ratios["TTFT cached / uncached"] = r
    res.checks.append(Check("E prefix-cached TTFT", "<= 0.25x uncached", _x(r), None if r is None else r <= 0.25))
    return res


# -- F ------------------------------------------------------------------------------------------------------
def _interactive_alone(ours: OursRunner, prompts: list[list[int]], out_len: int, think: float,
                       progress: ProgressFn) -> list[float]:
    eng = ours.engine
    ours.reset_prefix_cache()
    ttfts: list[float] = []
    due = time.monotonic()
    for i, p in enumerate(prompts):
        time.sleep(max(0.0, due - time.monotonic()))
        rid = eng.add_request(p, ours.params(out_len), request_id=f"inter-alone-{i}", app_id="interactive",
                              priority=-1, arrival_time=due)
        done = False
        while not done:
            for out in eng.step():
                if out.request_id == rid and out.finished:
                    ttfts.append(out.metrics.ttft)
                    done = True
        progress(1)
        due = time.monotonic() + think
    return ttfts


def _interactive_loaded(ours: OursRunner, batch_requests: int, batch_prompt: int, batch_out: int,
                        prompts: list[list[int]], out_len: int, think: float,
                        progress: ProgressFn) -> tuple[list[float], dict[str, float]]:
    """Keep `batch_requests` batch requests in flight (a finished one is replaced by a fresh random prompt, so
    the prefix cache cannot shortcut it) while the interactive app sends its requests one at a time; an
    interactive request arrives `think` seconds after the previous reply, usually in the middle of a step, and
    its arrival time is that wall-clock moment."""
    eng = ours.engine
    ours.reset_prefix_cache()
    rng = random.Random(6)
    inflight: set[str] = set()
    counter = 0

    def submit_batch() -> None:
        nonlocal counter
        rid = eng.add_request(random_tokens(rng, batch_prompt), ours.params(batch_out),
                              request_id=f"batch-{counter}", app_id="batch", priority=0)
        inflight.add(rid)
        counter += 1

    # The interactive app is declared as such, as the OS's system layer does for apps whose manifest asks for
    # it: the batch app's prompts then run in short chunks from the start.
    eng.set_latency_sensitive("interactive", -1)
    for _ in range(batch_requests):
        submit_batch()
    t_start = time.monotonic()
    due = t_start + think
    idx, rid, ttfts, step_s = 0, None, [], []
    batch_tokens = batch_done = 0
    try:
        while idx < len(prompts) or rid is not None:
            if rid is None and time.monotonic() >= due:
                rid = eng.add_request(prompts[idx], ours.params(out_len), request_id=f"inter-loaded-{idx}",
                                      app_id="interactive", priority=-1, arrival_time=due)
                idx += 1
            t0 = time.perf_counter()
            outs = eng.step()
            step_s.append(time.perf_counter() - t0)
            for out in outs:
                if out.request_id == rid:
                    if out.finished:
                        ttfts.append(out.metrics.ttft)
                        rid = None
                        due = time.monotonic() + think
                        progress(1)
                elif out.request_id in inflight:
                    batch_tokens += len(out.outputs[0].delta_token_ids)
                    if out.finished:
                        inflight.discard(out.request_id)
                        batch_done += 1
                        submit_batch()
    finally:
        eng.set_latency_sensitive("interactive", -1, enabled=False)
        for r in list(inflight) + ([rid] if rid else []):
            eng.abort_request(r)
    elapsed = time.monotonic() - t_start
    info = {"steps": float(len(step_s)), "step_mean_ms": 1e3 * statistics.fmean(step_s),
            "step_max_ms": 1e3 * max(step_s), "batch_tok_s": batch_tokens / elapsed,
            "batch_requests_done": float(batch_done)}
    return ttfts, info


def workload_f(ctx: Ctx) -> WorkloadResult:
    s = ctx.sizes
    inter = uniform_prompts(s.f_inter_requests, s.f_inter_prompt, seed=7)
    columns = [Column("n", "n", "{:.0f}"), Column("ttft_p50_ms", "p50 TTFT ms", "{:.0f}"),
               Column("ttft_p99_ms", "p99 TTFT ms", "{:.0f}"), Column("ttft_mean_ms", "mean TTFT ms", "{:.0f}"),
               Column("step_mean_ms", "mean step ms", "{:.0f}"), Column("step_max_ms", "max step ms", "{:.0f}"),
               Column("batch_tok_s", "batch tok/s")]
    res = WorkloadResult(
        "F", f"F: interactive {s.f_inter_prompt}/{s.f_inter_output} (priority -1) under a {s.f_batch_requests}-request "
             f"batch flood {s.f_batch_prompt}/{s.f_batch_output} (priority 0)", ctx.threads,
        {"batch_requests": s.f_batch_requests, "batch_prompt": s.f_batch_prompt, "batch_output": s.f_batch_output,
         "interactive_requests": s.f_inter_requests, "interactive_prompt": s.f_inter_prompt,
         "interactive_output": s.f_inter_output, "think_s": s.f_think_s},
        columns, primary="ttft_p99_ms", primary_higher_is_better=False)
    alone_name, loaded_name = "interactive alone", "interactive under batch load"
    ours = ctx.ours()

    def summarize(name: str, ttfts: list[float], info: dict[str, float] | None = None) -> EngineResult:
        m = {"n": float(len(ttfts)), "ttft_p50_ms": 1e3 * percentile(ttfts, 50),
             "ttft_p99_ms": 1e3 * percentile(ttfts, 99), "ttft_mean_ms": 1e3 * statistics.fmean(ttfts)}
        m.update(info or {})
        return EngineResult(name, metrics=m)

    try:
        with ctx.phase("F interactive alone", len(inter)) as progress:
            res.engines.append(summarize(alone_name, _interactive_alone(ours, inter, s.f_inter_output,
                                                                        s.f_think_s, progress)))
    except Exception as exc:
        res.engines.append(failed(alone_name, exc))
    try:
        with ctx.phase("F interactive under batch load", len(inter)) as progress:
            ttfts, info = _interactive_loaded(ours, s.f_batch_requests, s.f_batch_prompt, s.f_batch_output, inter,
                                              s.f_inter_output, s.f_think_s, progress)
        res.engines.append(summarize(loaded_name, ttfts, info))
    except Exception as exc:
        res.engines.append(failed(loaded_name, exc))
    alone, loaded = res.engine(alone_name), res.engine(loaded_name)
    r99 = ratio(loaded.get("ttft_p99_ms") if loaded else None, alone.get("ttft_p99_ms") if alone else None)
    r50 = ratio(loaded.get("ttft_p50_ms") if loaded else None, alone.get("ttft_p50_ms") if alone else None)
    res.ratios["p99 TTFT loaded / alone"] = r99
    res.ratios["p50 TTFT loaded / alone"] = r50
    res.notes.append("a step is not preemptible: an interactive request that arrives mid-step waits for that step "
                     "(up to 'max step ms') before its own prefill step can run")
    res.checks.append(Check("F interactive p99 TTFT under load", "<= 2x alone", _x(r99),
                            None if r99 is None else r99 <= 2.0))
    return res


WORKLOADS: dict[str, Callable[[Ctx], WorkloadResult]] = {
    "A": workload_a, "B": workload_b, "C": workload_c, "E": workload_e, "F": workload_f, "G": workload_g,
    "Q": workload_q,
}


def _x(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


# -- profile ------------------------------------------------------------------------------------------------
def profile_decode(ctx: Ctx, out_dir: Path, steps: int = 3) -> dict[str, Any]:
    """Where one decode step of workload A goes: prefill A's requests, then time `steps` pure-decode steps,
    then profile one with cProfile (Python functions) and one with torch.profiler (operators)."""
    from torch.profiler import ProfilerActivity, profile

    s = ctx.sizes
    ours = ctx.ours()
    eng = ours.engine
    ours.reset_prefix_cache()
    prompts = uniform_prompts(s.a_requests, s.a_prompt, seed=1)
    ids = [eng.add_request(p, ours.params(s.a_output + steps + 4)) for p in prompts]
    started: set[str] = set()
    try:
        with ctx.phase("profile: prefilling workload A", len(ids)) as progress:
            while len(started) < len(ids):
                for out in eng.step():
                    if out.outputs[0].token_ids and out.request_id not in started:
                        started.add(out.request_id)
                        progress(1)
        wall = []
        for _ in range(steps):
            t0 = time.perf_counter()
            eng.step()
            wall.append(time.perf_counter() - t0)
        prof_py = cProfile.Profile()
        prof_py.enable()
        eng.step()
        prof_py.disable()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            t0 = time.perf_counter()
            eng.step()
            torch_wall = time.perf_counter() - t0
    finally:
        for r in ids:
            eng.abort_request(r)
    step_ms = 1e3 * statistics.median(wall)
    events = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in events)  # microseconds, on the calling thread
    ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    # Shares are of the step's wall time. Work that is not an aten operator (a custom C++/ctypes kernel,
    # Python) does not show up as a row; the remainder row makes that visible.
    wall_us = torch_wall * 1e6
    op_rows = [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / wall_us,
                "calls": e.count} for e in ops[:15]]
    rest = wall_us - total_self
    op_rows.append({"op": "(wall time not in any aten op: custom kernels, Python, waiting)", "self_ms": rest / 1e3,
                    "share": rest / wall_us, "calls": 0})
    stats = pstats.Stats(prof_py)
    py_rows = []
    for (filename, line, func), (_cc, _nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if "llmasos" in filename:
            py_rows.append({"function": f"{Path(filename).name}:{line} {func}", "cum_ms": ct * 1e3, "self_ms": tt * 1e3})
    py_rows.sort(key=lambda r: r["cum_ms"], reverse=True)
    text = io.StringIO()
    text.write(f"decode step, batch {len(ids)}, context ~{s.a_prompt}: median wall {step_ms:.1f} ms "
               f"(profiled step {torch_wall * 1e3:.1f} ms)\n\n")
    text.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
    text.write("\n\ncProfile of one step (cumulative):\n")
    pstats.Stats(prof_py, stream=text).sort_stats("cumulative").print_stats(40)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"profile_decode_t{ctx.threads}.txt"
    path.write_text(text.getvalue())
    return {"threads": ctx.threads, "batch": len(ids), "step_ms": step_ms, "profiled_step_ms": torch_wall * 1e3,
            "op_self_total_ms": total_self / 1e3, "ops": op_rows, "python": py_rows[:15], "file": str(path)}
