"""Quick probes of this machine's matmul throughput and memory read bandwidth, for `llmasos plan`.

Both are best-of-several figures: the aim is what the hardware sustains on large, simple kernels, not an
average under load. They take about a second or two each on a laptop CPU.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class Hardware:
    device: str
    threads: int
    bandwidth_gbs: float | None  # memory read bandwidth, GB/s (1e9 bytes)
    tflops: dict[str, float | None] = field(default_factory=dict)  # matmul TFLOP/s per dtype
    source: dict[str, str] = field(default_factory=dict)  # figure -> "probe" | "given" | "none"

    def to_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(dtype: torch.dtype, device: str | torch.device = "cpu", size: int | None = None,
                  repeats: int = 5, budget_s: float = 1.5) -> float:
    """Best matmul throughput (TFLOP/s) of square `size` matmuls; 2048 unless a 1024 one is already slow."""
    device = torch.device(device)
    if size is None:
        a = torch.randn(1024, 1024, device=device).to(dtype)
        _sync(device)
        t = time.perf_counter()
        a @ a  # noqa: B018 - warm-up, and a speed check that picks the size
        _sync(device)
        size = 2048 if time.perf_counter() - t < 0.02 else 1024
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b  # noqa: B018 - warm-up (thread pool, kernel selection)
    _sync(device)
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b  # noqa: B018
        _sync(device)
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
        if spent > budget_s:
            break
    return 2 * size**3 / best / 1e12


def memory_bandwidth_gbs(device: str | torch.device = "cpu", nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Best read bandwidth (GB/s) of summing an `nbytes` float32 tensor: far larger than any cache."""
    device = torch.device(device)
    x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    x.sum()  # warm-up: first touch of the pages
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best / 1e9


def probe(device: str = "cpu", threads: int | None = None, bandwidth_gbs: float | None = None,
          tflops: float | None = None, run_probes: bool = True) -> Hardware:
    """Given figures win; each missing one is measured, or left None when `run_probes` is False."""
    if threads:
        torch.set_num_threads(threads)
    hw = Hardware(device=device, threads=torch.get_num_threads(), bandwidth_gbs=bandwidth_gbs)
    if bandwidth_gbs is not None:
        hw.source["bandwidth_gbs"] = "given"
    elif run_probes:
        hw.bandwidth_gbs = memory_bandwidth_gbs(device, nbytes=(512 if device != "cpu" else 256) << 20)
        hw.source["bandwidth_gbs"] = "probe"
    else:
        hw.source["bandwidth_gbs"] = "none"
    for name, dtype in _DTYPES.items():
        if tflops is not None:
            hw.tflops[name], hw.source[f"tflops_{name}"] = tflops, "given"
        elif run_probes:
            hw.tflops[name], hw.source[f"tflops_{name}"] = matmul_tflops(dtype, device), "probe"
        else:
            hw.tflops[name], hw.source[f"tflops_{name}"] = None, "none"
    return hw


def cpu_model() -> str:
    """The CPU's model name, with its family/model numbers (VMs often report only "AMD EPYC": family 25 is
    Zen 3/4, 26 is Zen 5; Intel's family 6 model numbers name the generation). Benchmarks print it."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model") and key not in fields:
                fields[key] = value.strip()
            if len(fields) == 3:
                break
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name
