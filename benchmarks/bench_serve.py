"""Load test of the HTTP server, in the manner of `vllm bench serve`: many streamed chat completions at once.

    .venv/bin/python benchmarks/bench_serve.py --model builtin --num-prompts 200 --output-len 32   # 8M model
    .venv/bin/python benchmarks/bench_serve.py --num-prompts 200 --concurrency 200 --output-len 32  # SmolLM2
    .venv/bin/python benchmarks/bench_serve.py --request-rate 4 --num-prompts 100 --plot bench_out/serve.png
    .venv/bin/python benchmarks/bench_serve.py --url http://127.0.0.1:8000      # any OpenAI server, e.g. vLLM

Without `--url` the script boots an `OS` with the chosen model in this process (`start_server`: uvicorn on the
OS's own event loop and thread, the engine on its thread) and drives it over real HTTP from the main thread's
asyncio loop with `httpx.AsyncClient`. Client, server and engine share the machine's cores (and the GIL: the
client parses every SSE line), as a client on the same host would.

Each request is POST /v1/chat/completions with `"stream": true`, `"stream_options": {"include_usage": true}`,
`"ignore_eos": true` and `max_completion_tokens = --output-len`, greedy, one user message of `--input-len`
random-word tokens (counted with the model's tokenizer; every prompt differs, so only the chat template's own
prefix can come from the prefix cache). Arrivals: all at once (`--request-rate inf`) or a Poisson process at
that rate; at most `--concurrency` requests in flight.

Measured at the client: TTFT = time from sending the request to the first SSE chunk whose delta has non-empty
content; ITL = the gaps between consecutive content chunks (pooled over all requests, as vLLM does); TPOT =
(E2E - TTFT) / (output tokens - 1) per request; E2E = send to the end of the stream (`data: [DONE]`). A
request succeeds when it gets 200, no error event, at least one content chunk and `[DONE]`. Output tokens come
from the usage chunk. "CPU s / wall s" is this process's CPU time over the run's wall time: server, engine and
client together in process (near the thread count when the cores were ours alone), the client alone with
`--url`.

After the run, leaks: in process, the script waits until the kernel has no live request, runs a no-op on the
engine thread (so every queued abort/free has been applied) and counts KV blocks not in the free list
(prefix-cached blocks with no user are in the free list, so this must be 0); it also prints the server's own
/metrics (`llmasos_kv_blocks_used`, running/waiting, how the LLM processes ended). With `--url`, leaks come
from /metrics when the server has them (`llmasos_kv_blocks_used`, or vLLM's `vllm:kv_cache_usage_perc`).

In process, the same workload (other prompts of the same sizes: the HTTP run's are in the prefix cache by
then) is also sent straight to the kernel, `AsyncLLM.generate` with the prompt ids the server would build: the
"engine direct" column, whose gap to the HTTP column is what the HTTP server, the system-call layer and the
client cost (`--no-direct` skips it).

The baseline is vLLM's OpenAI server, started as a subprocess when `vllm` is importable (or `--vllm-python`
names an interpreter that has it) and benchmarked with the same prompts; otherwise its column is skipped and
the script says how to point it at a running vLLM server with `--url`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import LoadMeter, cpu_model, module_available, package_version, percentile  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "140")))
VLLM_DEFAULT_HF = "HuggingFaceTB/SmolLM2-135M-Instruct"

_WORDS = ("time person year way day thing man world life hand part child eye woman place work week case "
          "point "
          "number group problem fact river harbor market garden kitchen window letter station island winter "
          "summer bridge forest engine signal budget report meeting council ticket museum library doctor "
          "coffee garlic tomato printer laptop battery ferry train weather storm morning evening answer "
          "question idea reason because although but and or so then also quite very maybe today tomorrow "
          "green blue quiet loud early late small large old new good bad first last long short high low "
          "build write read check review visit travel cook study learn teach walk drive carry open close")
WORDS = _WORDS.split()


# -- one request ---------------------------------------------------------------------------------------------
@dataclass
class RequestResult:
    index: int
    ok: bool = False
    status: int | None = None
    error: str | None = None
    start: float = 0.0  # seconds since the run began
    ttft: float | None = None
    e2e: float | None = None
    itls: list[float] = field(default_factory=list)
    content_chunks: int = 0
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    got_done: bool = False
    disconnected: bool = False  # closed by the client on purpose (--disconnect-frac)


async def one_request(client: httpx.AsyncClient, model: str, prompt: str, args: argparse.Namespace,
                      index: int, t0: float, disconnect_after: int | None = None) -> RequestResult:
    """One streamed chat completion; with `disconnect_after` the client hangs up after that many content
    chunks (the server must abort the request and free its KV blocks)."""
    r = RequestResult(index)
    payload = {"model": model, "messages": [{"role": "user", "content": prompt}],
               "max_completion_tokens": args.output_len, "temperature": args.temperature, "stream": True,
               "stream_options": {"include_usage": True}, "ignore_eos": True}
    st = time.perf_counter()
    r.start = st - t0
    last = st
    try:
        async with client.stream("POST", "/v1/chat/completions", json=payload) as resp:
            r.status = resp.status_code
            if resp.status_code != 200:
                body = await resp.aread()
                r.error = f"HTTP {resp.status_code}: {body[:400].decode(errors='replace')}"
                return r
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    r.got_done = True
                    continue
                now = time.perf_counter()
                try:
                    obj = json.loads(data)
                except json.JSONDecodeError:
                    r.error = f"bad SSE data: {data[:200]}"
                    continue
                if obj.get("error") is not None:
                    r.error = f"error event: {json.dumps(obj)[:400]}"
                    continue
                for ch in obj.get("choices") or []:
                    content = (ch.get("delta") or {}).get("content")
                    if content:
                        if r.ttft is None:
                            r.ttft = now - st
                        else:
                            r.itls.append(now - last)
                        last = now
                        r.content_chunks += 1
                    if ch.get("finish_reason"):
                        r.finish_reason = ch["finish_reason"]
                usage = obj.get("usage")
                if usage:
                    r.prompt_tokens = usage.get("prompt_tokens")
                    r.output_tokens = usage.get("completion_tokens")
                if disconnect_after is not None and r.content_chunks >= disconnect_after:
                    r.disconnected = True
                    break  # leaving the `async with` closes the connection mid-stream
        r.e2e = time.perf_counter() - st
    except Exception as exc:  # noqa: BLE001 - every failure is a data point
        r.error = f"{type(exc).__name__}: {exc}"[:400] or type(exc).__name__
    if r.disconnected and r.error is None:
        return r  # neither a success nor a failure
    if r.error is None and not r.got_done:
        r.error = "the stream ended without data: [DONE]"
    if r.error is None and r.ttft is None:
        r.error = "no content chunk in the stream"
    r.ok = r.error is None
    return r


# -- prompts -------------------------------------------------------------------------------------------------
def make_prompts(n: int, input_len: int, seed: int, tokenizer: Any) -> tuple[list[str], str]:
    """`n` distinct prompts of `input_len` tokens (of the user message, before the chat template)."""
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        words = [f"#{i}"] + [rng.choice(WORDS) for _ in range(max(2 * input_len, 8))]
        text = " ".join(words)
        if tokenizer is None:
            prompts.append(" ".join(words[:max(input_len, 1)]))
            continue
        ids = tokenizer.encode(text, add_special_tokens=False)[:input_len]
        prompts.append(tokenizer.decode(ids, skip_special_tokens=True))
    how = "model tokenizer" if tokenizer is not None else "no tokenizer: one word per token, approximate"
    return prompts, how


def load_tokenizer(name: str | None) -> Any:
    if not name:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


# -- /metrics ------------------------------------------------------------------------------------------------
def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value} (labels kept verbatim, comments dropped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name.strip()] = float(value)
    return out


async def scrape(client: httpx.AsyncClient) -> dict[str, float] | None:
    try:
        resp = await client.get("/metrics", timeout=30)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    return parse_metrics(resp.text)


KEY_METRICS = ("llmasos_kv_blocks_used", "llmasos_kv_blocks_total", "llmasos_num_requests_running",
               "llmasos_num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc",
               "vllm:num_requests_running", "vllm:num_requests_waiting")


def pick(metrics: dict[str, float] | None, prefix: str) -> float | None:
    """The value of a metric, summed over its label sets (vLLM labels every gauge with the model name)."""
    if not metrics:
        return None
    vals = [v for k, v in metrics.items() if k == prefix or k.startswith(prefix + "{")]
    return sum(vals) if vals else None


# -- where the CPU goes --------------------------------------------------------------------------------------
def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of each thread of this process so far (Linux /proc), named by Python thread when it is one
    (`MainThread` = the client, `llmasos-os` = uvicorn and the syscalls, `llmasos-engine` = the engine loop);
    the rest (OpenMP workers, to_thread helpers) by their kernel name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for task in Path("/proc/self/task").glob("*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            tid = int(task.name)
            stat = (task / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            name = names.get(tid) or f"other ({stat[stat.index('(') + 1:stat.rindex(')')]})"
            out[tid] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def cpu_by_thread(before: dict[int, tuple[str, float]],
                  after: dict[int, tuple[str, float]]) -> dict[str, float]:
    by: Counter = Counter()
    for tid, (name, secs) in after.items():
        by[name.split("_")[0]] += secs - before.get(tid, (name, 0.0))[1]
    return {k: round(v, 2) for k, v in by.most_common() if v >= 0.01}


# -- the run -------------------------------------------------------------------------------------------------
async def drive(prompts: list[str], args: argparse.Namespace, label: str, send: Any,
                sample: Any = None) -> dict[str, Any]:
    """Send every prompt through `send(index, prompt, t0)` with the run's arrival process and concurrency
    limit; `sample()` (optional) runs alongside until the last request is done."""
    rng = random.Random(args.seed + 1)
    sem = asyncio.Semaphore(args.concurrency)
    state = {"in_flight": 0, "max_in_flight": 0, "failed": 0}
    stop = asyncio.Event()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console) as progress:
        task = progress.add_task(label, total=len(prompts), info="")

        async def limited(i: int, prompt: str, t0: float) -> RequestResult:
            async with sem:
                state["in_flight"] += 1
                state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
                try:
                    res = await send(i, prompt, t0)
                finally:
                    state["in_flight"] -= 1
            state["failed"] += not res.ok and not res.disconnected
            progress.update(task, advance=1, info=f"in flight {state['in_flight']}, failed {state['failed']}")
            return res

        sampler = asyncio.create_task(sample(stop)) if sample is not None else None
        cpu0 = thread_cpu()
        with LoadMeter() as load:
            t0 = time.perf_counter()
            tasks = []
            for i, p in enumerate(prompts):
                if i and math.isfinite(args.request_rate):
                    await asyncio.sleep(rng.expovariate(args.request_rate))
                tasks.append(asyncio.create_task(limited(i, p, t0)))
            results = await asyncio.gather(*tasks)
            duration = time.perf_counter() - t0
        threads_cpu = cpu_by_thread(cpu0, thread_cpu())
        stop.set()
        if sampler is not None:
            await sampler
    return {"label": label, "duration": duration, "results": results, "max_in_flight": state["max_in_flight"],
            "load": load.result, "cpu_by_thread": threads_cpu}


async def run_load(base_url: str, prompts: list[str], args: argparse.Namespace, label: str) -> dict[str, Any]:
    """The HTTP run: a warm-up, the timed run with /metrics sampled alongside, then wait for an idle
    server."""
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    conns = args.concurrency + 8  # + the /metrics scrapes
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    timeout = httpx.Timeout(args.timeout, connect=60.0, pool=None)
    client = httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout, headers=headers)
    async with client:
        resp = await client.get("/v1/models")
        resp.raise_for_status()
        model = args.served_model or resp.json()["data"][0]["id"]
        console.print(f"[bold]{label}[/]: {base_url}, model id [cyan]{model}[/]")
        before = await scrape(client)
        # One request first, as `vllm bench serve` does: a broken setup fails here, not 200 times.
        for w in range(args.warmup):
            res = await one_request(client, model, prompts[w % len(prompts)], args, -1, time.perf_counter())
            if not res.ok:
                raise RuntimeError(f"{label}: the warm-up request failed: {res.error}")
        peaks: dict[str, float] = {}

        async def sample(stop: asyncio.Event) -> None:
            while args.metrics_interval > 0 and not stop.is_set():
                m = await scrape(client)
                for k in KEY_METRICS:
                    v = pick(m, k)
                    if v is not None:
                        peaks[k] = max(peaks.get(k, v), v)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.metrics_interval)

        drng = random.Random(args.seed + 2)
        hang_up = {i: drng.randint(1, max(args.output_len - 1, 1)) for i in range(len(prompts))
                   if drng.random() < args.disconnect_frac}

        async def send(i: int, prompt: str, t0: float) -> RequestResult:
            return await one_request(client, model, prompt, args, i, t0, hang_up.get(i))

        run = await drive(prompts, args, label, send, sample)
        after = await wait_idle(client, args)
    run.update(model=model, metrics_before=pick_all(before), metrics_after=pick_all(after),
               metrics_peak=peaks)
    return run


async def run_direct(os_: Any, prompts: list[str], args: argparse.Namespace, label: str) -> dict[str, Any]:
    """The same workload straight into the kernel (`AsyncLLM.generate`), no HTTP, no system call: the prompt
    ids are what the server would build (the codec's chat-template render), the sampling the same. The gap to
    the HTTP run is the cost of the HTTP server, the syscall layer and the client."""
    from llmasos.kernel.sampling_params import SamplingParams

    codec = os_.services.codec
    params = SamplingParams(max_tokens=args.output_len, temperature=args.temperature, ignore_eos=True)

    async def send(i: int, prompt: str, t0: float) -> RequestResult:
        r = RequestResult(i)
        st = time.perf_counter()
        r.start, last = st - t0, st
        try:
            ids = await asyncio.to_thread(codec.encode, codec.render([{"role": "user", "content": prompt}]))
            async for out in os_.llm.generate(ids, params):
                now = time.perf_counter()
                c = out.outputs[0]
                if c.delta_text:
                    if r.ttft is None:
                        r.ttft = now - st
                    else:
                        r.itls.append(now - last)
                    last = now
                    r.content_chunks += 1
                if out.finished:
                    r.finish_reason, r.got_done = c.finish_reason, True
                    r.prompt_tokens, r.output_tokens = len(out.prompt_token_ids), len(c.token_ids)
            r.e2e = time.perf_counter() - st
        except Exception as exc:  # noqa: BLE001
            r.error = f"{type(exc).__name__}: {exc}"[:400]
        if r.error is None and r.ttft is None:
            r.error = "no text in the outputs"
        r.ok = r.error is None
        return r

    await send(-1, prompts[0], time.perf_counter())  # warm-up
    run = await drive(prompts, args, label, send)
    run.update(model=os_.config.model.name or "default", metrics_before={}, metrics_after={}, metrics_peak={},
               http=False)
    return run


def pick_all(m: dict[str, float] | None) -> dict[str, float]:
    out = {k: v for k in KEY_METRICS if (v := pick(m, k)) is not None}
    for k, v in (m or {}).items():  # how our LLM processes ended, by state (completed, killed, ...)
        if k.startswith("llmasos_request_success_total{") and v:
            state = k.split('state="', 1)[1].split('"', 1)[0] if 'state="' in k else "?"
            key = f"processes ended {state}"
            out[key] = out.get(key, 0) + v
    return out


async def wait_idle(client: httpx.AsyncClient, args: argparse.Namespace) -> dict[str, float] | None:
    """Scrape /metrics until the server reports no running or waiting request (or `--drain-timeout`)."""
    deadline = time.monotonic() + args.drain_timeout
    while True:
        m = await scrape(client)
        busy = sum(pick(m, k) or 0 for k in ("llmasos_num_requests_running", "llmasos_num_requests_waiting",
                                                "vllm:num_requests_running", "vllm:num_requests_waiting"))
        if m is None or not busy or time.monotonic() > deadline:
            return m
        await asyncio.sleep(0.2)


# -- summary -------------------------------------------------------------------------------------------------
def summarize(run: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    res: list[RequestResult] = run["results"]
    ok = [r for r in res if r.ok]
    hung_up = sum(1 for r in res if r.disconnected and r.error is None)
    dur = run["duration"]
    out_tokens = sum(r.output_tokens if r.output_tokens is not None else r.content_chunks for r in ok)
    prompt_tokens = sum(r.prompt_tokens or 0 for r in ok)
    ttft = [r.ttft * 1000 for r in ok if r.ttft is not None]
    e2e = [r.e2e * 1000 for r in ok if r.e2e is not None]
    itl = [x * 1000 for r in ok for x in r.itls]
    tpot = [(r.e2e - r.ttft) * 1000 / (r.output_tokens - 1) for r in ok
            if r.output_tokens and r.output_tokens > 1 and r.e2e is not None and r.ttft is not None]
    none = "no response" if run.get("http", True) else "no HTTP"
    statuses = Counter(str(r.status) if r.status is not None else none for r in res)
    errors = Counter(r.error for r in res if r.error)
    short = [r for r in ok if r.output_tokens is not None and r.output_tokens != args.output_len]
    no_usage = sum(1 for r in ok if r.output_tokens is None)

    def pct(xs: list[float], q: float) -> float | None:
        return percentile(xs, q) if xs else None

    return {
        "label": run["label"], "model": run["model"], "requests": len(res), "successful": len(ok),
        "failed": len(res) - len(ok) - hung_up, "disconnected": hung_up, "status_codes": dict(statuses),
        "errors": dict(errors.most_common()),
        "duration_s": dur, "max_in_flight": run["max_in_flight"],
        "cpu_per_wall": run["load"]["cpu_per_wall"], "loadavg_1m": run["load"]["loadavg_1m"],
        "cpu_by_thread_s": run["cpu_by_thread"],
        "request_throughput": len(ok) / dur if dur else None,
        "output_tok_s": out_tokens / dur if dur else None,
        "total_tok_s": (out_tokens + prompt_tokens) / dur if dur else None,
        "output_tokens": out_tokens, "prompt_tokens": prompt_tokens,
        "mean_prompt_tokens": prompt_tokens / len(ok) if ok else None,
        "outputs_not_output_len": len(short), "outputs_without_usage": no_usage,
        "finish_reasons": dict(Counter(r.finish_reason for r in ok)),
        "mean_content_chunks": sum(r.content_chunks for r in ok) / len(ok) if ok else None,
        **{f"ttft_p{q}_ms": pct(ttft, q) for q in (50, 90, 99)},
        "ttft_mean_ms": sum(ttft) / len(ttft) if ttft else None,
        **{f"itl_p{q}_ms": pct(itl, q) for q in (50, 90, 99)},
        "itl_mean_ms": sum(itl) / len(itl) if itl else None,
        **{f"tpot_p{q}_ms": pct(tpot, q) for q in (50, 99)},
        **{f"e2e_p{q}_ms": pct(e2e, q) for q in (50, 90, 99)},
        "metrics_before": run["metrics_before"], "metrics_after": run["metrics_after"],
        "metrics_peak": run["metrics_peak"], "leak": run.get("leak"),
        "raw": [{k: v for k, v in asdict(r).items()} for r in res],
    }


ROWS = [  # key, label, format, better
    ("successful", "successful requests", "{:.0f}", "higher"),
    ("failed", "failed requests", "{:.0f}", "lower"),
    ("disconnected", "hung up by the client on purpose", "{:.0f}", None),
    ("duration_s", "duration (s)", "{:.2f}", "lower"),
    ("cpu_per_wall", "CPU s / wall s of this process", "{:.2f}", None),
    ("loadavg_1m", "1-min load average at the end", "{:.2f}", None),
    ("max_in_flight", "max requests in flight (client)", "{:.0f}", None),
    ("mean_prompt_tokens", "prompt tokens / request (with template)", "{:.1f}", None),
    ("request_throughput", "request throughput (req/s)", "{:.2f}", "higher"),
    ("output_tok_s", "output tok/s", "{:.1f}", "higher"),
    ("total_tok_s", "total (prompt + output) tok/s", "{:.1f}", "higher"),
    ("ttft_p50_ms", "TTFT p50 (ms)", "{:.0f}", "lower"),
    ("ttft_p90_ms", "TTFT p90 (ms)", "{:.0f}", "lower"),
    ("ttft_p99_ms", "TTFT p99 (ms)", "{:.0f}", "lower"),
    ("itl_p50_ms", "ITL p50 (ms)", "{:.1f}", "lower"),
    ("itl_p90_ms", "ITL p90 (ms)", "{:.1f}", "lower"),
    ("itl_p99_ms", "ITL p99 (ms)", "{:.1f}", "lower"),
    ("tpot_p50_ms", "TPOT p50 (ms)", "{:.1f}", "lower"),
    ("e2e_p50_ms", "E2E latency p50 (ms)", "{:.0f}", "lower"),
    ("e2e_p99_ms", "E2E latency p99 (ms)", "{:.0f}", "lower"),
    ("kv_leaked", "KV blocks leaked after the run", "{}", "lower"),
    ("kv_used_metrics", "/metrics KV blocks used (or usage) after", "{}", "lower"),
]


def leak_cells(s: dict[str, Any]) -> None:
    leak = s.get("leak")
    after = s["metrics_after"]
    s["kv_leaked"] = leak["leaked_blocks"] if leak else None
    if leak is None and "llmasos_kv_blocks_used" in after:  # --url: the server's own count
        s["kv_leaked"] = f"{after['llmasos_kv_blocks_used']:.0f} (/metrics)"
    if "llmasos_kv_blocks_used" in after:
        used, total = after["llmasos_kv_blocks_used"], after.get("llmasos_kv_blocks_total", 0)
        s["kv_used_metrics"] = f"{used:.0f} / {total:.0f}"
    elif "vllm:kv_cache_usage_perc" in after or "vllm:gpu_cache_usage_perc" in after:
        v = after.get("vllm:kv_cache_usage_perc", after.get("vllm:gpu_cache_usage_perc"))
        s["kv_used_metrics"] = f"{100 * v:.2f}% usage"
    else:
        s["kv_used_metrics"] = None


def fmt(v: Any, f: str) -> str:
    if v is None:
        return "-"
    return f.format(v) if isinstance(v, int | float) else str(v)


def print_table(summaries: list[dict[str, Any]], skipped: dict[str, str], args: argparse.Namespace) -> None:
    t = Table(title=f"bench_serve: {args.num_prompts} prompts, {args.input_len} in / {args.output_len} out, "
                    f"rate {args.request_rate}, concurrency {args.concurrency}", title_justify="left")
    t.add_column("metric")
    for s in summaries:
        t.add_column(s["label"], justify="right")
    for name in skipped:
        t.add_column(f"{name} (skipped)", justify="right", style="dim")
    ours, bases = summaries[0], summaries[1:]
    for base in bases:
        t.add_column(f"{ours['label']} / {base['label']}", justify="right")
    for key, label, f, better in ROWS:
        row = [label] + [fmt(s.get(key), f) for s in summaries] + ["-" for _ in skipped]
        for base in bases:
            a, b = ours.get(key), base.get(key)
            ok = isinstance(a, int | float) and isinstance(b, int | float) and b
            row.append(f"{a / b:.2f}x ({better} is better)" if ok and better else "-")
        t.add_row(*row)
    console.print(t)
    for s in summaries:
        console.print(f"[bold]{s['label']}[/]: status codes {s['status_codes']}; finish reasons "
                      f"{s['finish_reasons']}; outputs != {args.output_len} tokens: "
                      f"{s['outputs_not_output_len']}; without a usage chunk: {s['outputs_without_usage']}; "
                      f"mean content chunks / request {fmt(s['mean_content_chunks'], '{:.1f}')}")
        if s["errors"]:
            console.print(f"[red]{s['label']}: {s['failed']} failed requests; errors by message:[/]")
            for msg, n in list(s["errors"].items())[:10]:
                console.print(f"  [red]{n} x[/] {msg}")
        console.print(f"  CPU seconds by thread during the run ({s['duration_s']:.1f} s): "
                      f"{s['cpu_by_thread_s']}")
        console.print(f"  /metrics before: {s['metrics_before']}")
        console.print(f"  /metrics peak during the run (max of each, scraped every {args.metrics_interval} "
                      f"s): {s['metrics_peak']}")
        console.print(f"  /metrics after: {s['metrics_after']}")
        if s.get("leak"):
            lk = s["leak"]
            style = "green" if lk["leaked_blocks"] == 0 and lk["live_requests"] == 0 else "red"
            console.print(f"  [{style}]engine after the run: {lk['leaked_blocks']} KV blocks leaked of "
                          f"{lk['num_blocks']} ({lk['blocks_with_refs']} with references), "
                          f"{lk['live_requests']} live streams, scheduler running {lk['running']} / "
                          f"waiting {lk['waiting']}, {lk['cached_free_blocks']} prefix-cached blocks in the "
                          f"free list[/]")
    for name, why in skipped.items():
        console.print(f"[yellow]{name} column skipped: {why}[/]")


def plot(summaries: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for s in summaries:
        raw = [r for r in s["raw"] if r["ok"]]
        ttft = [r["ttft"] * 1000 for r in raw]
        itl = [x * 1000 for r in raw for x in r["itls"]]
        e2e = sorted(r["e2e"] * 1000 for r in raw)
        axes[0].hist(ttft, bins=40, alpha=0.6, label=s["label"])
        if itl:
            hi = max(itl)
            bins = [10 ** (k / 20) for k in range(-20, int(20 * math.log10(max(hi, 1.1))) + 2)]
            axes[1].hist(itl, bins=bins, alpha=0.6, label=s["label"])
        ys = [(k + 1) / len(e2e) for k in range(len(e2e))]
        axes[2].plot(e2e, ys, label=f"{s['label']} E2E")
        axes[2].plot(sorted(ttft), ys, linestyle="--", label=f"{s['label']} TTFT")
    axes[0].set(title="TTFT", xlabel="ms", ylabel="requests")
    axes[1].set(title="inter-token latency (all gaps)", xlabel="ms (log)", ylabel="gaps", xscale="log")
    axes[2].set(title="latency CDF", xlabel="ms", ylabel="share of requests")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"bench_serve - {cpu_model()}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    console.print(f"plot: {path}")


# -- servers -------------------------------------------------------------------------------------------------
def engine_leak_check(os_: Any, timeout: float) -> dict[str, Any]:
    """Wait for the kernel to drop every stream, let the engine thread apply what is queued, count blocks."""
    deadline = time.monotonic() + timeout
    while os_.llm.num_live() and time.monotonic() < deadline:
        time.sleep(0.05)
    live = os_.llm.num_live()

    def snap(e: Any) -> dict[str, Any]:
        bm = e.block_manager
        cached = getattr(bm, "cached", None) or {}
        referenced = sum(1 for b in getattr(bm, "blocks", []) if getattr(b, "ref_count", 0) > 0)
        return {"num_blocks": bm.num_blocks, "free_blocks": bm.num_free_blocks,
                "leaked_blocks": bm.num_blocks - bm.num_free_blocks, "blocks_with_refs": referenced,
                "running": len(e.scheduler.running), "waiting": len(e.scheduler.waiting),
                "cached_free_blocks": len(cached)}

    out = os_.llm.submit(snap).result(timeout=60)
    out["live_requests"] = live
    return out


def boot_ours(args: argparse.Namespace, tmpdir: Path) -> tuple[Any, Any]:
    from llmasos.server import start_server
    from llmasos.system.os import OS

    name = None if args.model in (None, "", "default") else args.model
    os_ = OS(data_dir=tmpdir, model={"name": name, "dtype": "auto", "threads": args.threads,
                                     "max_num_seqs": args.max_num_seqs})
    try:
        return os_, start_server(os_)
    except BaseException:
        os_.shutdown()
        raise


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_model_for(args: argparse.Namespace) -> str:
    if args.vllm_model:
        return args.vllm_model
    if args.model == "builtin":
        from llmasos.models.default_model import builtin_model_dir

        return str(builtin_model_dir())
    if args.model in (None, "", "default"):
        return VLLM_DEFAULT_HF
    return args.model


def vllm_available(args: argparse.Namespace) -> str | None:
    """None if vLLM can be started, else why not."""
    if args.skip_vllm:
        return "--skip-vllm"
    if args.vllm_python:
        rc = subprocess.run([args.vllm_python, "-c", "import vllm"], capture_output=True).returncode
        return None if rc == 0 else f"`import vllm` fails in {args.vllm_python}"
    if module_available("vllm"):
        return None
    return "vllm is not installed in this environment"


def start_vllm(args: argparse.Namespace, logdir: Path) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    model = vllm_model_for(args)
    py = args.vllm_python or sys.executable
    cmd = [py, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
           "--port", str(port), "--max-num-seqs", str(args.max_num_seqs)]
    env = dict(os.environ)
    threads = args.threads or os.cpu_count() or 1
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{threads - 1}")
    env.setdefault("OMP_NUM_THREADS", str(threads))
    log_path = logdir / "vllm_server.log"
    console.print(f"starting vLLM: {' '.join(cmd)} (log: {log_path})")
    proc = subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.vllm_start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited with {proc.returncode}:\n{tail(log_path)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                return proc, url, log_path
        time.sleep(1)
    proc.terminate()
    raise RuntimeError(f"vLLM did not come up within {args.vllm_start_timeout} s:\n{tail(log_path)}")


def tail(path: Path, n: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    return ""


def stop_proc(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# -- main ----------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", help="benchmark this running OpenAI-compatible server instead of booting ours")
    p.add_argument("--model", default=None,
                   help="ours: model name or path; default: the embedded SmolLM2-135M-Instruct; "
                        "'builtin': the 8M model")
    p.add_argument("--served-model", help="the model id to send (default: the first of GET /v1/models)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                   help="Bearer token for --url servers")
    p.add_argument("--tokenizer",
                   help="with --url: HF tokenizer (name or dir) to size prompts; else 1 word per token")
    p.add_argument("--num-prompts", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=200, help="max requests in flight")
    p.add_argument("--request-rate", type=float, default=float("inf"),
                   help="Poisson arrivals per second; inf (default): all at once")
    p.add_argument("--input-len", type=int, default=128,
                   help="tokens of the user message (before the chat template)")
    p.add_argument("--output-len", type=int, default=64, help="max_completion_tokens, with ignore_eos")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--disconnect-frac", type=float, default=0.0,
                   help="share of HTTP requests the client hangs up mid-stream (tests aborts and KV leaks)")
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: every core)")
    p.add_argument("--max-num-seqs", type=int, default=64,
                   help="the engine's running-batch limit (ours and vLLM)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=1, help="requests sent (and checked) before the timed run")
    p.add_argument("--timeout", type=float, default=1200.0, help="per-request read timeout, seconds")
    p.add_argument("--drain-timeout", type=float, default=60.0,
                   help="seconds to wait for the server to go idle")
    p.add_argument("--metrics-interval", type=float, default=2.0,
                   help="seconds between /metrics scrapes during the run (peaks); 0: off")
    p.add_argument("--json-out", type=Path, help="write every figure and every request's timings here")
    p.add_argument("--plot", type=Path, help="PNG: TTFT and ITL histograms, latency CDF")
    p.add_argument("--skip-vllm", action="store_true")
    p.add_argument("--no-direct", action="store_true",
                   help="skip the same workload sent straight to the engine (the cost of the HTTP layer)")
    p.add_argument("--vllm-python",
                   help="an interpreter with vllm installed (e.g. /work/tools/vllm-venv/bin/python)")
    p.add_argument("--vllm-model",
                   help=f"model for vLLM (default: {VLLM_DEFAULT_HF}, or the built-in model's dir)")
    p.add_argument("--vllm-start-timeout", type=float, default=900.0)
    args = p.parse_args(argv)
    if args.request_rate <= 0:
        p.error("--request-rate must be > 0 (or inf)")
    if args.num_prompts < 1 or args.concurrency < 1 or args.output_len < 1 or args.input_len < 1:
        p.error("--num-prompts, --concurrency, --input-len and --output-len must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = "the server's own" if args.url else args.threads or f"default ({os.cpu_count()})"
    console.print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; engine threads {threads}; load "
                  f"average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    console.print(f"workload: {args.num_prompts} prompts x {args.input_len} in / {args.output_len} out, "
                  f"request rate {args.request_rate}, max concurrency {args.concurrency}; httpx "
                  f"{httpx.__version__}, torch {torch.__version__}, vllm "
                  f"{package_version('vllm') or 'not installed'}")
    summaries: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    direct = None
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    rc = 0
    try:
        if args.url:
            tok = load_tokenizer(args.tokenizer)
            prompts, how = make_prompts(args.num_prompts, args.input_len, args.seed, tok)
            console.print(f"prompts sized with: {how}")
            run = asyncio.run(run_load(args.url.rstrip("/"), prompts, args, "server"))
            summaries.append(summarize(run, args))
        else:
            t = time.perf_counter()
            os_, handle = boot_ours(args, tmp / "os")
            try:
                console.print(f"llmasos booted in {time.perf_counter() - t:.1f} s at {handle.url}; torch "
                              f"threads {torch.get_num_threads()}, max_num_seqs {args.max_num_seqs}, KV "
                              f"blocks {os_.llm.engine.block_manager.num_blocks}")
                tok = os_.llm.engine.tokenizer
                prompts, how = make_prompts(args.num_prompts, args.input_len, args.seed, tok)
                console.print(f"prompts sized with: {how}")
                run = asyncio.run(run_load(handle.url, prompts, args, "llmasos"))
                run["leak"] = engine_leak_check(os_, args.drain_timeout)
                summaries.append(summarize(run, args))
                if not args.no_direct:  # other prompts, same sizes: the HTTP run's are in the prefix cache
                    direct_prompts, _ = make_prompts(args.num_prompts, args.input_len, args.seed + 1000, tok)
                    run = asyncio.run(run_direct(os_, direct_prompts, args, "engine direct (no HTTP)"))
                    run["leak"] = engine_leak_check(os_, args.drain_timeout)
                    direct = summarize(run, args)
            finally:
                handle.stop()
                os_.shutdown()
            why = vllm_available(args)
            if why is None:
                try:
                    proc, url, _ = start_vllm(args, tmp)
                except Exception as exc:  # noqa: BLE001 - ours is still reported
                    skipped["vllm"] = f"vLLM did not start: {exc}"
                else:
                    try:
                        run = asyncio.run(run_load(url, prompts, args, "vllm"))
                        summaries.append(summarize(run, args))
                    except Exception as exc:  # noqa: BLE001
                        skipped["vllm"] = f"the vLLM run failed: {type(exc).__name__}: {exc}"
                    finally:
                        stop_proc(proc)
            else:
                vm = vllm_model_for(args)
                skipped["vllm"] = (f"{why}. To compare, start vLLM's OpenAI server yourself (`vllm serve "
                                   f"{vm} --max-num-seqs {args.max_num_seqs}`) and run this script with "
                                   f"--url http://HOST:PORT --tokenizer {vm} and the same workload flags, or "
                                   f"pass --vllm-python /path/to/vllm-venv/bin/python")
        if direct is not None:
            summaries.append(direct)
        for s in summaries:
            leak_cells(s)
        print_table(summaries, skipped, args)
        for s in summaries:
            leak = s.get("leak") or {}
            if s["failed"] or leak.get("leaked_blocks", 0) > 0 or leak.get("live_requests", 0) > 0:
                rc = 1
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            doc = {"args": {k: ("***" if k == "api_key" and v else
                                str(v) if isinstance(v, Path) or v == float("inf") else v)
                            for k, v in vars(args).items()},  # a key must not end up in a results file
                   "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "loadavg": list(os.getloadavg()),
                   "date": time.strftime("%Y-%m-%d %H:%M:%S"), "skipped": skipped, "runs": summaries}
            args.json_out.write_text(json.dumps(doc, indent=1, default=str))
            console.print(f"json: {args.json_out}")
        if args.plot:
            plot(summaries, args.plot)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
