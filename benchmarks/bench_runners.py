"""The engines under test, each behind a small runner with the same shape of answer.

- `OursRunner`: llmasos's `LLM`, driven through `engine.add_request` / `engine.step` exactly like `LLM.generate`
  does, so a progress bar can follow the steps and per-step timestamps are available.
- `HFRunner`: the same checkpoint through `transformers`: static-batch `model.generate` and, when the installed
  version has it, continuous batching (`model.generate_batch` / the continuous-batching manager).
- `vllm_*` / `llama_cpp_*`: optional baselines, used only when the packages are already installed.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ProgressFn = Callable[[int], None]  # called with the number of newly finished units (tokens or requests)


@dataclass
class BatchRun:
    """What one timed run produced: wall time, useful output tokens and per-request details."""

    elapsed: float
    output_tokens: int
    token_ids: list[list[int]]
    ttfts: list[float] = field(default_factory=list)
    first_token_times: list[float] = field(default_factory=list)
    last_token_times: list[float] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)


# -- ours ------------------------------------------------------------------------------------------------------
class OursRunner:
    name = "llmasos"

    def __init__(self, ckpt: Path, threads: int, *, kv_cache_memory: int | None = None,
                 enable_prefix_caching: bool = True, max_num_seqs: int = 128,
                 max_num_batched_tokens: int = 1024) -> None:
        from llmasos import LLM

        self.settings = dict(dtype="bfloat16", device="cpu", num_threads=threads, max_num_seqs=max_num_seqs,
                             max_num_batched_tokens=max_num_batched_tokens,
                             enable_prefix_caching=enable_prefix_caching, kv_cache_memory=kv_cache_memory)
        self.llm = LLM(str(ckpt), **self.settings)

    @property
    def engine(self) -> Any:
        return self.llm.engine

    @property
    def model(self) -> torch.nn.Module:
        return self.llm.engine.model

    def reset_prefix_cache(self) -> None:
        """Forget cached prefixes so a repeated prompt is computed again (only valid while the engine is idle)."""
        bm = getattr(self.engine, "block_manager", None)
        if bm is not None and hasattr(bm, "reset_prefix_cache") and not self.engine.has_unfinished_requests():
            bm.reset_prefix_cache()

    def kv_blocks(self) -> int | None:
        bm = getattr(self.engine, "block_manager", None)
        return getattr(bm, "num_blocks", None)

    def preemptions(self) -> int:
        return int(getattr(getattr(self.engine, "stats", None), "preemptions", 0))

    def params(self, max_tokens: int) -> Any:
        from llmasos import SamplingParams

        return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

    def run(self, prompts: list[list[int]], out_lens: list[int], progress: ProgressFn | None = None, *,
            app_id: str = "default", priority: int = 0, reset_cache: bool = True) -> BatchRun:
        """Submit all prompts at once and step until every request is done (what `LLM.generate` does)."""
        eng = self.engine
        if reset_cache:
            self.reset_prefix_cache()
        pre0 = self.preemptions()
        steps = 0
        t0 = time.perf_counter()
        ids = [eng.add_request(p, self.params(o), app_id=app_id, priority=priority)
               for p, o in zip(prompts, out_lens, strict=True)]
        final: dict[str, Any] = {}
        first_tok: dict[str, float] = {}
        last_tok: dict[str, float] = {}
        while len(final) < len(ids):
            if not eng.has_unfinished_requests():
                raise RuntimeError(f"engine went idle with {len(ids) - len(final)} requests unfinished")
            outs = eng.step()
            steps += 1
            now = time.monotonic()
            new = 0
            for out in outs:
                delta = len(out.outputs[0].delta_token_ids)
                if delta:
                    new += delta
                    first_tok.setdefault(out.request_id, now)
                    last_tok[out.request_id] = now
                if out.finished:
                    final[out.request_id] = out
            if progress is not None and new:
                progress(new)
        elapsed = time.perf_counter() - t0
        outs = [final[r] for r in ids]
        return BatchRun(
            elapsed=elapsed,
            output_tokens=sum(len(o.token_ids) for o in outs),
            token_ids=[list(o.token_ids) for o in outs],
            ttfts=[o.metrics.ttft for o in outs if o.metrics.ttft is not None],
            first_token_times=[first_tok.get(r, math.nan) for r in ids],
            last_token_times=[last_tok.get(r, math.nan) for r in ids],
            extra={"steps": steps, "preemptions": self.preemptions() - pre0,
                   "cached_prompt_tokens": sum(o.metrics.num_cached_prompt_tokens for o in outs)},
        )

    def warmup(self, prompts: list[list[int]], out_len: int) -> None:
        self.run(prompts, [out_len] * len(prompts))
        self.reset_prefix_cache()


# -- Hugging Face transformers ----------------------------------------------------------------------------------
class _TokenClock:
    """A stopping criterion that never stops: it timestamps every generation step and feeds the progress bar."""

    def __init__(self, batch: int, progress: ProgressFn | None) -> None:
        self.batch = batch
        self.progress = progress
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.times.append(time.monotonic())
        if self.progress is not None:
            self.progress(self.batch)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class _DropPsutilNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        # We size the cache explicitly and reuse the manager on purpose; these warnings do not apply.
        return "psutil" not in msg and "persistent_manager=True" not in msg


class HFRunner:
    name = "hf"

    def __init__(self, ckpt: Path, threads: int) -> None:
        import transformers
        from transformers import AutoModelForCausalLM

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        logging.getLogger("ContinuousBatchingLogger").addFilter(_DropPsutilNoise())
        torch.set_num_threads(threads)
        self.model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.bfloat16).eval()
        self.pad_id = 0

    # static batch ------------------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], out_lens: list[int], progress: ProgressFn | None = None) -> BatchRun:
        """One `model.generate` call over the whole batch (left padding), greedy, generating max(out_lens)
        tokens for every row (min_new_tokens = max_new_tokens, so nothing stops early); only each request's
        own `out_len` tokens count as useful output."""
        from transformers import StoppingCriteriaList

        n, width, new = len(prompts), max(len(p) for p in prompts), max(out_lens)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        clock = _TokenClock(n, progress)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                pad_token_id=self.pad_id, stopping_criteria=StoppingCriteriaList([clock]),
            )
        elapsed = time.perf_counter() - t0
        gen = out[:, width:].tolist()
        token_ids = [row[:o] for row, o in zip(gen, out_lens, strict=True)]
        first = clock.times[0] if clock.times else math.nan
        return BatchRun(
            elapsed=elapsed,
            output_tokens=sum(len(t) for t in token_ids),
            token_ids=token_ids,
            first_token_times=[first] * n,
            last_token_times=[clock.times[o - 1] if len(clock.times) >= o else math.nan for o in out_lens],
            extra={"generated_incl_padding": n * new, "steps": len(clock.times)},
        )

    # continuous batching -------------------------------------------------------------------------------------
    def cb_support(self) -> str | None:
        """None when continuous batching is usable, else the reason it is not."""
        fn = getattr(self.model, "generate_batch", None)
        if fn is None:
            import transformers

            return f"transformers {transformers.__version__} has no model.generate_batch"
        params = inspect.signature(fn).parameters
        missing = [p for p in ("inputs", "generation_config") if p not in params]
        if missing:
            return f"generate_batch signature differs (no {', '.join(missing)})"
        return None

    def cb_config(self, prompts: list[list[int]], out_lens: list[int], max_batch_tokens: int | None,
                  max_requests: int) -> Any:
        """Size the paged cache for the whole workload at once and fix the batch limits explicitly, so the
        settings do not depend on the warm-up call's workload hints."""
        from transformers import ContinuousBatchingConfig

        page = ContinuousBatchingConfig().page_size
        blocks = sum(-(-(len(p) + o) // page) + 1 for p, o in zip(prompts, out_lens, strict=True))
        kwargs: dict[str, Any] = dict(num_blocks=blocks, max_requests_per_batch=max_requests)
        if max_batch_tokens:
            kwargs["max_batch_tokens"] = max_batch_tokens
        return ContinuousBatchingConfig(**kwargs)

    def _gen_config(self, max_new_tokens: int) -> Any:
        from transformers import GenerationConfig

        # eos_token_id=-1 turns EOS off, the counterpart of ignore_eos=True.
        return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=-1,
                                pad_token_id=self.pad_id)

    def generate_batch(self, prompts: list[list[int]], out_lens: list[int], cb_config: Any,
                       progress: ProgressFn | None = None) -> BatchRun:
        """Continuous batching through the manager that `generate_batch` uses. A persistent manager is reused
        so the timed run excludes its one-off setup (cache allocation), as ours excludes engine construction.

        Uniform output lengths go through `model.generate_batch` itself; per-request lengths need the manager's
        `add_request(max_new_tokens=...)`, which `generate_batch` does not expose."""
        gc = self._gen_config(max(out_lens))
        t0 = time.perf_counter()
        if len(set(out_lens)) == 1:
            with torch.inference_mode():
                res = self.model.generate_batch(prompts, generation_config=gc, continuous_batching_config=cb_config,
                                                persistent_manager=True, progress_bar=False)
            outs = [res[k] for k in res]
            if progress is not None:
                progress(len(outs))
        else:
            outs = self._manager_run(prompts, out_lens, gc, cb_config, progress)
        elapsed = time.perf_counter() - t0
        errors = [o.error for o in outs if getattr(o, "error", None)]
        if errors or len(outs) != len(prompts):
            raise RuntimeError(f"{len(outs)}/{len(prompts)} results, errors: {errors[:2]}")
        by_id = {o.request_id: o for o in outs}
        ordered = [by_id[k] for k in sorted(by_id, key=_req_index)]
        token_ids = [list(o.generated_tokens)[:n] for o, n in zip(ordered, out_lens, strict=True)]
        return BatchRun(elapsed=elapsed, output_tokens=sum(len(t) for t in token_ids), token_ids=token_ids)

    def _manager_run(self, prompts: list[list[int]], out_lens: list[int], gc: Any, cb_config: Any,
                     progress: ProgressFn | None) -> list[Any]:
        results: dict[str, Any] = {}
        with torch.inference_mode(), self.model.continuous_batching_context_manager(
                generation_config=gc, continuous_batching_config=cb_config, persistent_manager=True,
                block=True, timeout=5) as manager:
            for i, (p, o) in enumerate(zip(prompts, out_lens, strict=True)):
                manager.add_request(input_ids=p, request_id=f"req_{i}", max_new_tokens=o)
            while len(results) < len(prompts):
                r = manager.get_result(timeout=1)
                if r is None:
                    if not manager.is_running():
                        raise RuntimeError("the continuous-batching thread stopped early")
                    continue
                if r.is_finished():
                    results[r.request_id] = r
                    if progress is not None:
                        progress(1)
        return list(results.values())

    def close_cb(self) -> None:
        destroy = getattr(self.model, "destroy_cached_continuous_batching_manager", None)
        if destroy is not None:
            destroy()


def _req_index(request_id: str) -> int:
    tail = request_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


# -- optional baselines ---------------------------------------------------------------------------------------
# Never installed by the project (README.md says how): vLLM-CPU from its own virtual environment, llama.cpp
# through llama-cpp-python (C) or its own benchmark tool (bench_llamacpp.py, G and Q).
def vllm_run(ckpt: Path, threads: int, prompts: list[list[int]], out_lens: list[int]) -> BatchRun:
    """vLLM in this process (only when it is importable here; `vllm_subprocess_run` is the usual way)."""
    from vllm_worker import run_batch

    torch.set_num_threads(threads)
    out = run_batch(str(ckpt), prompts, out_lens)
    return BatchRun(elapsed=out["elapsed"], output_tokens=sum(len(t) for t in out["token_ids"]),
                    token_ids=out["token_ids"])


def vllm_subprocess_run(python: Path, ckpt: Path, threads: int, prompts: list[list[int]],
                        out_lens: list[int]) -> BatchRun:
    """The same batch through vLLM installed in its own virtual environment (`vllm_worker.py` run by `python`)."""
    import json
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"prompts": prompts, "out_lens": out_lens}, f)
    worker = Path(__file__).with_name("vllm_worker.py")
    r = subprocess.run([str(python), str(worker), "--model", str(ckpt), "--threads", str(threads),
                        "--requests", f.name], capture_output=True, text=True, timeout=3600)
    Path(f.name).unlink(missing_ok=True)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("VLLM_RESULT ")), None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"vLLM worker failed ({r.returncode}): {(r.stderr or r.stdout)[-600:]}")
    out = json.loads(line.removeprefix("VLLM_RESULT "))
    ids = out["token_ids"]
    return BatchRun(elapsed=out["elapsed"], output_tokens=sum(len(t) for t in ids), token_ids=ids)


GGUF_FILE_TYPES = {0: "F32", 1: "F16", 7: "Q8_0", 32: "BF16"}  # llama.cpp's LLAMA_FTYPE_* (the ones we export)


def gguf_file_type(gguf: Path) -> str:
    """The weight type of a GGUF file as llama.cpp names it (BF16, Q8_0, ...), read from its metadata."""
    from llama_cpp import Llama

    try:
        meta = Llama(model_path=str(gguf), vocab_only=True, verbose=False).metadata
        code = int(meta.get("general.file_type", -1))
    except Exception:  # unreadable file: the run itself will report the error
        return gguf.stem
    return GGUF_FILE_TYPES.get(code, f"type {code}")


def llama_cpp_decode(gguf: Path, threads: int, prompt: list[int], out_len: int) -> dict[str, float]:
    """Single-stream greedy decode through llama-cpp-python on a GGUF export of the same checkpoint."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_threads=threads, n_ctx=len(prompt) + out_len + 8, verbose=False)
    times: list[float] = []
    for _ in llm.generate(prompt[:8], temp=0.0):  # warm-up
        break
    llm.reset()
    t0 = time.perf_counter()
    for _tok in llm.generate(prompt, temp=0.0, reset=True):
        times.append(time.perf_counter())
        if len(times) >= out_len:
            break
    decode = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else math.nan
    return {"decode_tok_s": decode, "ttft_ms": (times[0] - t0) * 1e3}
