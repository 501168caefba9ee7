"""Prometheus metrics, named `llmasos_*` in the style of vLLM's `vllm:*`: the kernel's queue, KV cache and
prefix cache read at scrape time; latencies, tokens and system calls counted as processes and calls end.
Each server has its own registry (several can run in one Python process)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                   40.0, 80.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.4, 0.8, 1.6)


class _KernelCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Any:
        snap = self.m.kernel_snapshot()
        if snap is None:
            return
        for name, doc, value in [
            ("llmasos_num_requests_running", "Requests in the kernel's running batch", snap["running"]),
            ("llmasos_num_requests_waiting", "Requests waiting for the kernel (queued or preempted)", snap["waiting"]),
            ("llmasos_kv_cache_usage_perc", "Share of KV-cache blocks in use (1 = full)", snap["kv_usage"]),
            ("llmasos_kv_blocks_used", "KV-cache blocks in use", snap["kv_blocks_used"]),
            ("llmasos_kv_blocks_total", "KV-cache blocks in the pool", snap["kv_blocks_total"]),
            ("llmasos_prefix_cache_hit_rate", "Prefix-cache block hits / lookups since start", snap["prefix_hit_rate"]),
        ]:
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g
        procs = GaugeMetricFamily("llmasos_processes", "Live processes by state", labels=["state"])
        for state, n in self.m.live_processes().items():
            procs.add_metric([state], n)
        yield procs


class Metrics:
    def __init__(self, os_: Any) -> None:
        self.os = os_
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ttft = Histogram("llmasos_time_to_first_token_seconds", "Time from admission to the first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("llmasos_inter_token_latency_seconds",
                             "Mean time between generated tokens, one observation per token of a request",
                             buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("llmasos_e2e_request_latency_seconds", "Time from admission to the last token",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("llmasos_prompt_tokens", "Prompt tokens processed, per app", ["app"], registry=r)
        self.generation_tokens = Counter("llmasos_generation_tokens", "Tokens generated, per app", ["app"],
                                         registry=r)
        self.requests = Counter("llmasos_request_success", "LLM processes that ended, by final state",
                                ["app", "state"], registry=r)
        self.syscalls = Counter("llmasos_syscalls", "System calls by decision", ["app", "call", "decision"],
                                registry=r)
        r.register(_KernelCollector(self))
        self._lock = threading.Lock()
        self._app_tokens: dict[str, int] = defaultdict(int)
        os_.services.procs.listeners.append(self._process_ended)
        os_.syscalls.listeners.append(self._syscall)

    # -- hooks -----------------------------------------------------------------------------------------
    def _process_ended(self, p: Any) -> None:
        if p.kind not in ("llm", "summary"):
            return
        self.requests.labels(p.app, p.state.value).inc()
        self.prompt_tokens.labels(p.app).inc(p.tokens_in)
        self.generation_tokens.labels(p.app).inc(p.tokens_out)
        with self._lock:
            self._app_tokens[p.app] += p.tokens_in + p.tokens_out
        if p.first_token_at is not None:
            self.ttft.observe(max(p.first_token_at - p.queued_at, 0.0))
            if p.finished_at is not None:
                self.e2e.observe(max(p.finished_at - p.queued_at, 0.0))
                if p.tokens_out > 1:
                    mean = max(p.finished_at - p.first_token_at, 0.0) / (p.tokens_out - 1)
                    for _ in range(min(p.tokens_out - 1, 4096)):
                        self.itl.observe(mean)

    def _syscall(self, app: str, call: str, decision: str) -> None:
        self.syscalls.labels(app or "-", call, decision).inc()

    # -- snapshots (also the console's system view) ----------------------------------------------------
    def kernel_snapshot(self) -> dict | None:
        llm = self.os.llm
        if hasattr(llm, "snapshot"):  # the upstream driver reports its own queue
            return llm.snapshot()
        eng = getattr(llm, "engine", None)
        if eng is None or not hasattr(eng, "block_manager"):
            return None
        bm, sched, stats = eng.block_manager, eng.scheduler, eng.stats
        total, free = bm.num_blocks, bm.num_free_blocks
        return {"time": time.time(), "running": len(sched.running), "waiting": len(sched.waiting),
                "kv_blocks_total": total, "kv_blocks_used": total - free, "kv_usage": (total - free) / total,
                "prefix_hit_rate": bm.prefix_hits / bm.prefix_queries if bm.prefix_queries else 0.0,
                "prompt_tokens": stats.prompt_tokens, "generated_tokens": stats.generated_tokens,
                "preemptions": stats.preemptions, "steps": stats.steps}

    def live_processes(self) -> dict[str, int]:
        counts: dict[str, int] = {"waiting": 0, "running": 0, "preempted": 0}
        self.os.services.refresh_states()
        for p in self.os.services.procs.ps(include_finished=False):
            counts[p.state.value] = counts.get(p.state.value, 0) + 1
        return counts

    def app_tokens(self) -> dict[str, int]:
        with self._lock:
            return dict(self._app_tokens)

    def close(self) -> None:
        for hooks, fn in ((self.os.services.procs.listeners, self._process_ended),
                          (self.os.syscalls.listeners, self._syscall)):
            if fn in hooks:
                hooks.remove(fn)
