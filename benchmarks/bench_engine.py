"""Benchmark the llmasos engine against Hugging Face transformers (and vLLM / llama.cpp when installed) on one
random-weight checkpoint, in one run, and report same-run ratios.

    .venv/bin/python benchmarks/bench_engine.py --quick                 # ~1 minute smoke run
    .venv/bin/python benchmarks/bench_engine.py --workloads A,C,E,F --threads 2
    .venv/bin/python benchmarks/bench_engine.py --threads 1,2 --repeats 3 --profile

See benchmarks/README.md for what each workload measures.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from bench_common import (
    FULL,
    QUICK,
    QUICK_LAYERS,
    LoadMeter,
    WorkloadResult,
    ensure_checkpoint,
    env_info,
    read_model_shape,
)
from bench_workloads import WORKLOADS, Ctx, Options, profile_decode
from rich import box
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="A,B,C,E,F,G,Q",
                   help="comma-separated subset of A,B,C,E,F,G,Q (default: all); 'none' with --profile to only "
                        "profile")
    p.add_argument("--threads", default=None,
                   help="torch thread counts to sweep, e.g. 1,2 (default: torch's default, all cores)")
    p.add_argument("--quick", action="store_true",
                   help=f"tiny smoke configuration: {QUICK_LAYERS} layers and shrunken workloads (~1 minute)")
    p.add_argument("--layers", type=int, default=None,
                   help="override num_hidden_layers of the bench model (default 28; 2 with --quick)")
    p.add_argument("--repeats", type=int, default=1,
                   help="timed runs per engine for A, B and C, round-robin; the median is reported")
    p.add_argument("--out-dir", type=Path, default=REPO / "bench_out",
                   help="results, plot and the cached checkpoint go here (default: bench_out/)")
    p.add_argument("--kv-cache-gib", type=float, default=None,
                   help="KV-cache budget of our engine in GiB (default: the engine's automatic size)")
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument("--max-num-batched-tokens", type=int, default=1024)
    p.add_argument("--hf-cb-max-batch-tokens", type=int, default=None,
                   help="max_batch_tokens of HF continuous batching (default: transformers' own choice)")
    p.add_argument("--skip-hf", action="store_true", help="run our engine only")
    p.add_argument("--profile", action="store_true",
                   help="also profile one decode step of workload A (torch.profiler + cProfile)")
    p.add_argument("--gguf", type=Path, nargs="+", default=[],
                   help="GGUF exports of the checkpoint (bf16, and q8_0 for reference; see make_gguf.py): one "
                        "llama.cpp row each in C, if llama-cpp-python is installed")
    p.add_argument("--llama-cpp-bin", type=Path, default=None,
                   help="directory with llama.cpp's llama-batched-bench: llama.cpp rows in G and Q (README)")
    p.add_argument("--vllm-python", type=Path, default=None,
                   help="python of a separate virtual environment with vLLM (it pins its own dependencies): a "
                        "vLLM row in A")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG chart")
    args = p.parse_args(argv)
    args.workload_list = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    if args.workload_list == ["NONE"]:
        args.workload_list = []
    unknown = [w for w in args.workload_list if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {unknown}; choose from {','.join(WORKLOADS)}")
    default_threads = torch.get_num_threads()
    try:
        args.thread_list = [int(t) for t in args.threads.split(",")] if args.threads else [default_threads]
    except ValueError:
        p.error("--threads takes comma-separated integers, e.g. 1,2")
    if any(t < 1 for t in args.thread_list):
        p.error("thread counts must be >= 1")
    if args.quick and args.layers is None:
        args.layers = QUICK_LAYERS
    return args


# -- rendering ------------------------------------------------------------------------------------------------
def fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return spec.format(value)


def header_table(env: dict[str, Any], args: argparse.Namespace, shape: dict[str, int], ckpt: Path) -> Table:
    t = Table(title="llmasos engine benchmark", box=box.SIMPLE_HEAVY, show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("versions", f"llmasos {env['llmasos']} · torch {env['torch']} · transformers {env['transformers']} "
                          f"· python {env['python']}")
    t.add_row("optional", f"vllm {env['vllm'] or 'not installed'} · llama-cpp-python "
                          f"{env['llama_cpp'] or 'not installed'} · matplotlib {env['matplotlib'] or 'not installed'}")
    t.add_row("cpu", f"{env['cpu']} · {env['logical_cpus']} logical CPUs · {' '.join(env['cpu_flags'])}")
    t.add_row("threads", ", ".join(map(str, args.thread_list)))
    t.add_row("model", f"random-weight Llama, {shape['layers']} layers, hidden {shape['hidden']}, heads "
                       f"{shape['heads']}/{shape['kv_heads']}, intermediate {shape['intermediate']}, vocab "
                       f"{shape['vocab']}, bf16 · {ckpt}")
    t.add_row("mode", ("QUICK smoke sizes" if args.quick else "full sizes") + f" · repeats {args.repeats}")
    t.add_row("machine load", f"load average {env['loadavg'][0]:.1f} / {env['loadavg'][1]:.1f} / "
                              f"{env['loadavg'][2]:.1f} (1/5/15 min) at start: other processes skew absolute numbers")
    return t


def workload_table(res: WorkloadResult) -> Table:
    load = ""
    if res.load:
        load = f", load avg {res.load['loadavg_1m']:.1f}, our CPU/wall {res.load['cpu_per_wall']:.2f}"
    t = Table(title=f"{res.title}  [dim](threads={res.threads}, {res.elapsed_s:.0f}s{load})[/dim]",
              box=box.ROUNDED, title_justify="left")
    t.add_column("engine", style="bold")
    for c in res.columns:
        t.add_column(c.label, justify="right")
    for e in res.engines:
        if e.ok:
            cells = [fmt(e.metrics.get(c.key), c.fmt) for c in res.columns]
            spread = _spread(e.samples, res.primary)
            if spread and res.columns and res.columns[0].key == res.primary:
                cells[0] += f" [dim]{spread}[/dim]"
            t.add_row(e.name, *cells)
        else:
            style = "yellow" if e.status == "skipped" else "red"
            note = e.note if e.note.startswith("skipped") else f"{e.status}: {e.note}"
            t.add_row(e.name, f"[{style}]{note}[/{style}]", *[""] * (len(res.columns) - 1))
    captions = [f"{k}: [bold]{fmt(v, '{:.2f}x')}[/bold]" for k, v in res.ratios.items()]
    captions += [f"[dim]{n}[/dim]" for n in res.notes]
    if captions:
        t.caption = "\n".join(captions)
        t.caption_justify = "left"
    return t


def _spread(samples: list[dict[str, float]], key: str) -> str:
    vals = [s[key] for s in samples if key in s]
    if len(vals) < 2:
        return ""
    return f"({min(vals):.1f}–{max(vals):.1f})"


def summary_table(results: list[WorkloadResult], quick: bool = False) -> Table:
    t = Table(title="summary vs the issue's targets (same-run ratios; absolute numbers are noisy)",
              box=box.ROUNDED, title_justify="left")
    for col in ("workload", "threads", "check", "target", "this run", "status", "CPU/wall"):
        t.add_column(col, justify="right" if col in ("threads", "this run", "CPU/wall") else "left")
    for r in results:
        cpu = fmt(r.load.get("cpu_per_wall"), "{:.2f}")
        for c in r.checks:
            status = {True: "[green]met[/green]", False: "[red]not met[/red]", None: "[yellow]n/a[/yellow]"}[c.passed]
            if c.target == "informational":
                status = "[cyan]info[/cyan]"
            if quick:
                status = "[yellow]n/a (quick sizes)[/yellow]"
            t.add_row(r.key, str(r.threads), c.name, c.target, c.value, status, cpu)
        if not r.checks:
            for k, v in r.ratios.items():
                t.add_row(r.key, str(r.threads), k, "—", fmt(v, "{:.2f}x"), "[dim]info[/dim]", cpu)
    t.caption = ("CPU/wall: this process's CPU seconds per wall second during the workload; well below the "
                 "thread count means other processes shared the cores")
    if quick:
        t.caption += "\n--quick shrinks model and workloads: the targets apply to the full sizes only"
    t.caption_justify = "left"
    return t


def profile_tables(prof: dict[str, Any]) -> list[Table]:
    ops = Table(title=f"one decode step of A (batch {prof['batch']}, threads {prof['threads']}): median "
                      f"{prof['step_ms']:.0f} ms/step; top operators by self CPU time "
                      f"(profiled step {prof['profiled_step_ms']:.0f} ms)", box=box.ROUNDED, title_justify="left")
    for col in ("operator", "self ms", "of step wall", "calls"):
        ops.add_column(col, justify="left" if col == "operator" else "right")
    for r in prof["ops"]:
        ops.add_row(r["op"], f"{r['self_ms']:.1f}", f"{r['share']:.0%}", str(r["calls"] or ""))
    ops.caption = ("shares are of the profiled step's wall time (an operator's time is measured on the calling "
                   "thread, intra-op threads included); the last row is time spent outside aten operators")
    ops.caption_justify = "left"
    py = Table(title="same step, Python functions of llmasos by cumulative time (cProfile adds overhead)",
               box=box.ROUNDED, title_justify="left")
    for col in ("function", "cum ms", "self ms"):
        py.add_column(col, justify="left" if col == "function" else "right")
    for r in prof["python"][:12]:
        py.add_row(r["function"], f"{r['cum_ms']:.1f}", f"{r['self_ms']:.1f}")
    py.caption = f"full tables: {prof['file']}"
    py.caption_justify = "left"
    return [ops, py]


def write_plot(results: list[WorkloadResult], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot written"
    shown = [r for r in results if any(e.ok and e.get(r.primary) is not None for e in r.engines)]
    if not shown:
        return "nothing to plot"
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 4), squeeze=False)
    for ax, r in zip(axes[0], shown, strict=True):
        engines = [e for e in r.engines if e.ok and e.get(r.primary) is not None]
        ax.bar(range(len(engines)), [e.get(r.primary) for e in engines],
               color=["#2b6cb0" if "llmasos" in e.name or "interactive" in e.name else "#a0aec0" for e in engines])
        ax.set_xticks(range(len(engines)), [e.name.replace(" (", "\n(") for e in engines], fontsize=7, rotation=20)
        label = next((c.label for c in r.columns if c.key == r.primary), r.primary)
        ax.set_title(f"{r.key} ({r.threads} thr): {label}" + ("" if r.primary_higher_is_better else " (lower=better)"),
                     fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot: {path}"


# -- main -------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Logs and CI capture are not terminals: give the tables room instead of Rich's 80-column fallback.
    console = Console(width=None if sys.stdout.isatty() else 150)
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    env = env_info()
    ckpt = ensure_checkpoint(out_dir, args.layers, console.log)
    shape = read_model_shape(ckpt)
    console.print(header_table(env, args, shape, ckpt))
    opts = Options(
        repeats=args.repeats,
        kv_cache_memory=int(args.kv_cache_gib * (1 << 30)) if args.kv_cache_gib else None,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        hf_cb_max_batch_tokens=args.hf_cb_max_batch_tokens, skip_hf=args.skip_hf, gguf=args.gguf,
        llama_cpp_bin=args.llama_cpp_bin, vllm_python=args.vllm_python,
    )
    ctx = Ctx(ckpt=ckpt, shape=shape, sizes=QUICK if args.quick else FULL, opts=opts, console=console)
    results: list[WorkloadResult] = []
    profiles: list[dict[str, Any]] = []
    stamp = time.strftime("%Y%m%d-%H%M%S")

    def save() -> Path:
        """Write everything measured so far (after every workload, so an interrupted run keeps its numbers)."""
        payload = {
            "env": env,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "model": {**shape, "checkpoint": str(ckpt)},
            "membw": {str(k): v for k, v in ctx._membw.items()},
            "results": [r.to_json() for r in results],
            "profile": profiles,
            "total_s": time.perf_counter() - t_start,
        }
        path = out_dir / f"bench_{stamp}.json"
        path.write_text(json.dumps(payload, indent=2, default=str))
        (out_dir / "bench_latest.json").write_text(path.read_text())
        return path
    for threads in args.thread_list:
        ctx.set_threads(threads)
        for key in args.workload_list:
            t0 = time.perf_counter()
            with LoadMeter() as load:
                try:
                    res = WORKLOADS[key](ctx)
                except Exception as exc:  # a broken workload is reported, the others still run
                    console.print(f"[red]workload {key} failed (threads={threads}): {type(exc).__name__}: {exc}")
                    console.print(traceback.format_exc(limit=4), style="dim")
                    res = WorkloadResult(key, f"{key}: failed", threads, {}, [],
                                         notes=[f"{type(exc).__name__}: {exc}"])
            res.elapsed_s = time.perf_counter() - t0
            res.load = load.result
            results.append(res)
            console.print(workload_table(res))
            save()
            gc.collect()
        if args.profile:
            try:
                prof = profile_decode(ctx, out_dir)
                profiles.append(prof)
                for t in profile_tables(prof):
                    console.print(t)
                save()
            except Exception as exc:
                console.print(f"[red]profile failed: {type(exc).__name__}: {exc}")
    console.print(summary_table(results, args.quick))
    json_path = save()
    console.print(f"results: {json_path} (and {out_dir / 'bench_latest.json'})")
    if not args.no_plot:
        console.print(write_plot(results, out_dir / f"bench_{stamp}.png"))
    console.print(f"total {time.perf_counter() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
