"""Shared pieces of the engine benchmark: sizes, result records, environment facts, the cached checkpoint,
seeded prompts and the memory-bandwidth probe."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import random
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmasos.eval.hardware import cpu_model  # noqa: F401 - re-exported for the benchmarks

VOCAB_SIZE = 32000
FIRST_TOKEN_ID = 3  # keep clear of pad (0), bos (1) and eos (2) in the random prompts


# -- workload sizes ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """Every knob of every workload; `FULL` is the issue's definition, `QUICK` a smoke-test shrink of it."""

    # A: uniform batch
    a_requests: int = 64
    a_prompt: int = 128
    a_output: int = 64
    # B: variable lengths (inclusive ranges)
    b_requests: int = 64
    b_prompt: tuple[int, int] = (32, 512)
    b_output: tuple[int, int] = (16, 256)
    # C: one request, decode speed
    c_prompt: int = 128
    c_output: int = 128
    membw_bytes: int = 1 << 30
    # E: shared system prompt across apps
    e_apps: int = 8
    e_system: int = 512
    e_suffix: int = 32
    e_output: int = 16
    # F: interactive app under a batch flood
    f_batch_requests: int = 64
    f_batch_prompt: int = 128
    f_batch_output: int = 64
    f_inter_requests: int = 8
    f_inter_prompt: int = 128
    f_inter_output: int = 16
    f_think_s: float = 0.2  # pause between one interactive reply and the next request
    # warm-up run before timing (per engine)
    warm_requests: int = 2
    warm_prompt: int = 16
    warm_output: int = 4


FULL = Sizes()
QUICK = Sizes(
    a_requests=8, a_prompt=32, a_output=16,
    b_requests=8, b_prompt=(8, 64), b_output=(4, 32),
    c_prompt=32, c_output=32, membw_bytes=256 << 20,
    e_apps=4, e_system=64, e_suffix=16, e_output=4,
    f_batch_requests=8, f_batch_prompt=32, f_batch_output=16,
    f_inter_requests=3, f_inter_prompt=32, f_inter_output=4, f_think_s=0.05,
)
QUICK_LAYERS = 2


# -- result records ----------------------------------------------------------------------------------------
@dataclass
class EngineResult:
    """One engine's numbers on one workload; status is ok, skipped or error (with the reason in `note`)."""

    name: str
    status: str = "ok"
    note: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, float]] = field(default_factory=list)  # per repeat, when repeated

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def get(self, key: str) -> float | None:
        return self.metrics.get(key) if self.ok else None


@dataclass
class Check:
    """A target from the issue, evaluated on this run (passed is None when it could not be evaluated)."""

    name: str
    target: str
    value: str
    passed: bool | None


@dataclass
class Column:
    key: str
    label: str
    fmt: str = "{:.1f}"


@dataclass
class WorkloadResult:
    key: str
    title: str
    threads: int
    params: dict[str, Any]
    columns: list[Column]
    engines: list[EngineResult] = field(default_factory=list)
    ratios: dict[str, float | None] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    primary: str = ""  # the metric key the plot and summary use
    primary_higher_is_better: bool = True
    elapsed_s: float = 0.0
    load: dict[str, float] = field(default_factory=dict)  # machine load while it ran (see `LoadMeter`)

    def engine(self, name: str) -> EngineResult | None:
        return next((e for e in self.engines if e.name == name), None)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["columns"] = [c.label for c in self.columns]
        return d


class LoadMeter:
    """How busy the machine was during a phase: the 1-minute load average at the end, and this process's CPU
    time over wall time (close to the thread count when the cores were ours alone, well below when shared)."""

    def __enter__(self) -> LoadMeter:
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()
        self.result: dict[str, float] = {}
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.t0
        self.result = {"loadavg_1m": os.getloadavg()[0],
                       "cpu_per_wall": (time.process_time() - self.cpu0) / wall if wall > 0 else math.nan}


def ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return num / den


def skipped(name: str, reason: str) -> EngineResult:
    return EngineResult(name, status="skipped", note=reason)


def failed(name: str, exc: BaseException) -> EngineResult:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {Path(last[0].filename).name}:{last[0].lineno})" if last else ""
    return EngineResult(name, status="error", note=f"{type(exc).__name__}: {exc}"[:300] + where)


def run_repeated(runners: dict[str, Callable[[], dict[str, float]]], repeats: int,
                 on_error: Callable[[str, BaseException], None] | None = None) -> dict[str, EngineResult]:
    """Run each engine `repeats` times, round-robin so that background noise hits all of them alike, and keep
    the median of every metric. An engine that raises is reported as an error and not run again."""
    results = {name: EngineResult(name) for name in runners}
    for _ in range(max(1, repeats)):
        for name, fn in runners.items():
            res = results[name]
            if not res.ok:
                continue
            try:
                res.samples.append(fn())
            except Exception as exc:  # one engine failing must not sink the others
                results[name] = failed(name, exc)
                if on_error is not None:
                    on_error(name, exc)
    for res in results.values():
        if res.ok and res.samples:
            keys = res.samples[0].keys()
            res.metrics = {k: statistics.median(s[k] for s in res.samples) for k in keys}
            if len(res.samples) == 1:
                res.samples = []
    return results


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]), like numpy's default."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# -- environment -------------------------------------------------------------------------------------------
def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ["avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"]
                return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def module_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def env_info() -> dict[str, Any]:
    import transformers

    import llmasos

    return {
        "llmasos": getattr(llmasos, "__version__", package_version("llmasos")),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "torch_default_threads": torch.get_num_threads(),
        "vllm": package_version("vllm"),
        "llama_cpp": package_version("llama_cpp_python") or package_version("llama-cpp-python"),
        "matplotlib": package_version("matplotlib"),
        "loadavg": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# -- checkpoint --------------------------------------------------------------------------------------------
def ensure_checkpoint(out_dir: Path, layers: int | None, log: Callable[[str], None]) -> Path:
    """Build the 0.42B random-weight Llama checkpoint once (bf16, no tokenizer) and reuse it from `out_dir`.

    `layers` overrides num_hidden_layers (None = the preset's 28). A finished build leaves a marker file, so
    an interrupted one is rebuilt instead of loaded half-written."""
    from llmasos.models.random_checkpoint import PRESETS, build_random_checkpoint

    n_layers = layers or PRESETS["bench"]["num_hidden_layers"]
    path = out_dir / "ckpt" / f"llama-bench-L{n_layers}-V{VOCAB_SIZE}-bf16"
    marker = path / ".complete"
    if marker.is_file():
        return path
    log(f"building the random-weight checkpoint in {path} (once; later runs reuse it)")
    overrides = {"num_hidden_layers": n_layers} if layers else {}
    build_random_checkpoint(path, family="llama", preset="bench", vocab_size=VOCAB_SIZE, dtype=torch.bfloat16,
                            with_tokenizer=False, **overrides)
    marker.write_text(json.dumps({"layers": n_layers, "built": time.strftime("%Y-%m-%d %H:%M:%S")}))
    return path


def read_model_shape(ckpt: Path) -> dict[str, int]:
    cfg = json.loads((ckpt / "config.json").read_text())
    heads = cfg["num_attention_heads"]
    return {
        "hidden": cfg["hidden_size"],
        "layers": cfg["num_hidden_layers"],
        "heads": heads,
        "kv_heads": cfg.get("num_key_value_heads", heads),
        "head_dim": cfg.get("head_dim") or cfg["hidden_size"] // heads,
        "intermediate": cfg["intermediate_size"],
        "vocab": cfg["vocab_size"],
        "tied": int(bool(cfg.get("tie_word_embeddings", False))),
    }


def weight_bytes_read_per_token(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameter bytes, bytes a decode step streams): a step reads every weight except the input
    embedding table, of which it gathers one row per token (unless the table doubles as the LM head)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    unique = {p.data_ptr(): p.numel() * p.element_size() for p in params.values()}
    total = sum(unique.values())
    embed = [p for n, p in params.items() if n.endswith(("embed_tokens.weight", "wte.weight"))]
    head = [p for n, p in params.items() if n.endswith("lm_head.weight")]
    if not embed or (head and head[0].data_ptr() == embed[0].data_ptr()):
        return total, total
    return total, total - embed[0].numel() * embed[0].element_size()


def linear_flops(shape: dict[str, int], layer_tokens: int, sampled_tokens: int) -> float:
    """FLOPs of the linear layers: every token through each layer's q/k/v/o and MLP projections, plus the LM
    head for the tokens that are sampled (an engine that only computes those logits does no more)."""
    h, d = shape["hidden"], shape["head_dim"]
    attn = h * (shape["heads"] + 2 * shape["kv_heads"]) * d + shape["heads"] * d * h
    mlp = 3 * h * shape["intermediate"]
    return 2.0 * (layer_tokens * shape["layers"] * (attn + mlp) + sampled_tokens * h * shape["vocab"])


def measure_matmul_gflops(shape: dict[str, int], rows: int = 1024, repeats: int = 5) -> float:
    """Best bf16 matmul rate (GFLOP/s) on the model's own projection shapes at `rows` tokens, with weights
    prepacked for oneDNN where torch supports it (the fastest matmul we know for this CPU)."""
    h, inter = shape["hidden"], shape["intermediate"]
    best = 0.0
    for k, n in ((h, 2 * inter), (inter, h), (h, h)):
        x = torch.randn(rows, k).bfloat16()
        w = torch.randn(n, k).bfloat16()
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
            args = (x, packed, None, "none", [], "")
            fn: Callable[..., torch.Tensor] = torch.ops.mkldnn._linear_pointwise
        except (AttributeError, RuntimeError):
            args, fn = (x, w), torch.nn.functional.linear
        with torch.inference_mode():
            fn(*args)
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn(*args)
                best = max(best, 2 * rows * k * n / (time.perf_counter() - t0) / 1e9)
    return best


def kv_bytes_per_token(shape: dict[str, int], dtype_bytes: int = 2) -> int:
    return 2 * shape["layers"] * shape["kv_heads"] * shape["head_dim"] * dtype_bytes


# -- prompts -----------------------------------------------------------------------------------------------
def random_tokens(rng: random.Random, n: int, vocab: int = VOCAB_SIZE) -> list[int]:
    return [rng.randrange(FIRST_TOKEN_ID, vocab) for _ in range(n)]


def uniform_prompts(n: int, length: int, seed: int, vocab: int = VOCAB_SIZE) -> list[list[int]]:
    rng = random.Random(seed)
    return [random_tokens(rng, length, vocab) for _ in range(n)]


def variable_workload(n: int, prompt_range: tuple[int, int], output_range: tuple[int, int], seed: int = 0,
                      vocab: int = VOCAB_SIZE) -> tuple[list[list[int]], list[int]]:
    """Workload B's requests: lengths drawn first (seeded), then the prompt tokens."""
    rng = random.Random(seed)
    p_lens = [rng.randint(*prompt_range) for _ in range(n)]
    o_lens = [rng.randint(*output_range) for _ in range(n)]
    prompts = [random_tokens(rng, p, vocab) for p in p_lens]
    return prompts, o_lens


# -- memory bandwidth ----------------------------------------------------------------------------------------
def measure_memory_bandwidth(nbytes: int, repeats: int = 5) -> dict[str, float]:
    """Best-of-N GB/s (1e9 bytes/s) of a read-only pass (sum over a float32 tensor of `nbytes`) and of a copy
    (read + write, counted as 2 * nbytes). Uses torch's current thread count."""
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    best_sum = best_copy = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        src.sum()
        best_sum = min(best_sum, time.perf_counter() - t0)
        t0 = time.perf_counter()
        dst.copy_(src)
        best_copy = min(best_copy, time.perf_counter() - t0)
    del src, dst
    return {"read_gbs": nbytes / best_sum / 1e9, "copy_gbs": 2 * nbytes / best_copy / 1e9,
            "size_mib": nbytes / (1 << 20)}
