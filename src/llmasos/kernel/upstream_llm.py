"""`UpstreamLLM`: the kernel's interface (`AsyncLLM`'s) over OpenAI-compatible servers, for when the model layer
runs on vLLM, SGLang, Ollama or llama.cpp at scale.

The OS keeps its own scheduling in front: at most `max_inflight` requests per healthy upstream are out at once,
and the rest wait in a queue ordered by priority, then by each app's weighted virtual time (the kernel's fair
share), so priorities, renice, per-app share and quotas hold whatever the upstreams do. Requests go to the
least-loaded healthy upstream as token ids (`/v1/completions`, the chat template is rendered here, so the
memory manager counts exactly); an upstream that fails before the first token is retried elsewhere, and one that
dies mid-stream is resumed on another from the text generated so far.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from llmasos.kernel.outputs import CompletionOutput, RequestMetrics, RequestOutput
from llmasos.kernel.sampling_params import SamplingParams
from llmasos.kernel.upstream_pool import Upstream, UpstreamPool, UpstreamUnavailable

RETRY_STATUSES = (429, 500, 502, 503, 504)


class UpstreamEngine:
    """What the OS reads off an engine: the tokenizer, the window, live requests (none are held here)."""

    model_source = None

    def __init__(self, tokenizer: Any, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.requests: dict[str, Any] = {}
        self.eos_token_ids: list[int] = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def encode(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)

    def set_latency_sensitive(self, app_id: str, priority: int, enabled: bool = True) -> None:
        """Chunked prefill is the upstream's business; the queue here already puts urgent apps first."""


@dataclass(order=True)
class _Waiter:
    priority: int
    vtime: float
    seq: int
    rid: str = field(compare=False)
    app: str = field(compare=False)
    future: asyncio.Future = field(compare=False)
    cancelled: bool = field(default=False, compare=False)


class UpstreamLLM:
    def __init__(self, pool: UpstreamPool, tokenizer: Any, *, max_model_len: int | None = None,
                 max_inflight: int = 64, timeout: float = 600.0) -> None:
        window = max_model_len or pool.max_model_len
        if not window:
            raise ValueError("the upstreams do not say their context window: set model.max_model_len")
        self.pool = pool
        self.engine = UpstreamEngine(tokenizer, int(window))
        self.max_inflight = max_inflight
        self.timeout = timeout
        self._queue: list[_Waiter] = []
        self._running: dict[str, _Waiter] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._vtime: dict[str, float] = {}
        self._seq = itertools.count()
        self._aborted: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self.stats = {"generated_tokens": 0, "prompt_tokens": 0, "requests": 0, "failovers": 0, "resumed": 0}
        self._stopped = False

    # -- the AsyncLLM interface ------------------------------------------------------------------------
    async def generate(self, prompt: str | list[int], params: SamplingParams | None = None, *,
                       request_id: str | None = None, app_id: str = "default", priority: int = 0,
                       weight: float = 1.0, add_special_tokens: bool = True, **_: Any) -> AsyncIterator[RequestOutput]:
        if self._stopped:
            raise UpstreamUnavailable("the upstream driver is shut down")
        params = params or SamplingParams()
        params.validate()
        ids = self.engine.encode(prompt, add_special_tokens) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise ValueError("prompt is empty (no tokens)")
        if len(ids) >= self.engine.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens but the context window is {self.engine.max_model_len}")
        rid = request_id or f"up-{uuid.uuid4().hex[:12]}"
        if rid in self._tasks or any(w.rid == rid for w in self._queue):
            raise ValueError(f"request id {rid!r} is already in use")
        self._loop = asyncio.get_running_loop()
        self._tasks[rid] = asyncio.current_task()  # type: ignore[assignment]
        metrics = RequestMetrics(time.monotonic())
        max_tokens = params.max_tokens if params.max_tokens is not None else self.engine.max_model_len - len(ids)
        waiter = None
        try:
            waiter = await self._admit(rid, app_id, priority, weight, len(ids) + max_tokens)
            if waiter is None:  # aborted while it waited
                yield self._output(rid, ids, "", [], "", [], "abort", None, metrics, finished=True)
                return
            async for out in self._run(rid, ids, params, max_tokens, metrics):
                yield out
        finally:
            self._running.pop(rid, None)
            self._tasks.pop(rid, None)
            self._aborted.discard(rid)
            if waiter is not None:
                waiter.cancelled = True
            self._wake()

    def abort(self, request_id: str) -> bool:
        """Stop a request: a waiting one leaves the queue, a running one's upstream stream is closed (the
        upstream aborts it); its stream ends with finish_reason "abort"."""
        task = self._tasks.get(request_id)
        if task is None or task.done() or request_id in self._aborted:
            return False
        self._aborted.add(request_id)
        for w in list(self._queue):
            if w.rid == request_id and not w.cancelled and not w.future.done():
                w.future.get_loop().call_soon_threadsafe(_cancel, w.future)
                return True
        task.get_loop().call_soon_threadsafe(task.cancel)
        return True

    def renice(self, request_id: str, priority: int) -> bool:
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError("priority must be an integer (lower runs first)")
        if any(w.rid == request_id and not w.cancelled for w in list(self._queue)) and self._loop is not None:
            self._loop.call_soon_threadsafe(self._renice_waiting, request_id, priority)
            return True
        return request_id in self._running  # already out: the upstream has no priorities to change

    def _renice_waiting(self, request_id: str, priority: int) -> None:
        for w in self._queue:
            if w.rid == request_id:
                w.priority = priority
        heapq.heapify(self._queue)

    def submit(self, fn: Callable[[Any], Any]) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        try:
            fut.set_result(fn(self.engine))
        except BaseException as exc:
            fut.set_exception(exc)
        return fut

    async def settle(self) -> None:
        await asyncio.sleep(0)

    def num_live(self) -> int:
        return len(self._tasks)

    def snapshot(self) -> dict:
        ups = self.pool.upstreams
        return {"time": time.time(), "running": len(self._running), "waiting": sum(not w.cancelled for w in self._queue),
                "kv_blocks_total": 0, "kv_blocks_used": 0, "kv_usage": 0.0, "prefix_hit_rate": 0.0,
                "prompt_tokens": self.stats["prompt_tokens"], "generated_tokens": self.stats["generated_tokens"],
                "preemptions": 0, "steps": self.stats["requests"], "upstreams": [u.info() for u in ups],
                "failovers": self.stats["failovers"]}

    def shutdown(self) -> None:
        self._stopped = True
        self.pool.close()
        for client in self._clients.values():
            if not client.is_closed:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    loop = None
                if loop is not None:
                    loop.create_task(client.aclose())

    # -- admission: the OS's scheduling in front of the upstreams --------------------------------------
    def _capacity(self) -> int:
        healthy = sum(1 for u in self.pool.upstreams if u.healthy) or 1
        return healthy * self.max_inflight

    async def _admit(self, rid: str, app: str, priority: int, weight: float, cost: int) -> _Waiter | None:
        # Start-time fair queueing: an app's requests are ordered by its virtual time, which grows by the
        # request's cost over the app's weight; a newcomer starts at the least active app's time.
        floor = min((w.vtime for w in self._queue if not w.cancelled), default=None)
        start = max(self._vtime.get(app, 0.0), floor if floor is not None else 0.0)
        self._vtime[app] = start + cost / max(weight, 1e-6)
        w = _Waiter(priority, start, next(self._seq), rid, app, asyncio.get_running_loop().create_future())
        heapq.heappush(self._queue, w)
        self._wake()
        try:
            await w.future
        except asyncio.CancelledError:
            w.cancelled = True
            self._wake()
            if w.future.cancelled() and rid in self._aborted:
                return None  # our abort cancelled the wait, not the caller
            raise
        return w

    def _wake(self) -> None:
        while self._queue and len(self._running) < self._capacity():
            w = heapq.heappop(self._queue)
            if w.cancelled or w.future.done():
                continue
            self._running[w.rid] = w
            w.future.set_result(None)

    # -- one request, with failover --------------------------------------------------------------------
    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        c = self._clients.get(loop)
        if c is None or c.is_closed:
            c = self._clients[loop] = httpx.AsyncClient(
                headers=self.pool.headers, timeout=httpx.Timeout(self.timeout, connect=5.0),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=256))
        return c

    async def _run(self, rid: str, ids: list[int], params: SamplingParams, max_tokens: int,
                   metrics: RequestMetrics) -> AsyncIterator[RequestOutput]:
        tok = self.engine.tokenizer
        if params.n != 1:
            yield await self._whole(rid, ids, params, max_tokens, metrics)
            return
        text, gen_ids, tried = "", [], set()
        finish, stop_reason = None, None
        self.stats["requests"] += 1
        self.stats["prompt_tokens"] += len(ids)
        while finish is None:
            u = self.pool.choose(tried)
            ok = False
            try:
                # Resume after a dead upstream: the prompt plus what was generated, for what remains.
                body = self._body(ids + gen_ids, params, max_tokens - len(gen_ids), stream=True)
                async with self._client().stream("POST", u.url + "/completions", json=body) as r:
                    if r.status_code in RETRY_STATUSES:
                        raise _Retry(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                    if r.status_code != 200:
                        raise ValueError(_error_message(await r.aread(), r.status_code))
                    async for line in r.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            raise _Retry(str(chunk["error"])[:300])
                        if not chunk.get("choices"):
                            continue
                        ch = chunk["choices"][0]
                        delta = ch.get("text") or ""
                        if delta:
                            if metrics.first_token_time is None:
                                metrics.first_token_time = time.monotonic()
                            text += delta
                            new_ids = tok.encode(text, add_special_tokens=False)
                            delta_ids = new_ids[len(gen_ids):] if new_ids[:len(gen_ids)] == gen_ids else new_ids
                            self.stats["generated_tokens"] += max(len(new_ids) - len(gen_ids), 0)
                            gen_ids = new_ids
                            yield self._output(rid, ids, text, gen_ids, delta, delta_ids, None, None, metrics)
                        if ch.get("finish_reason"):
                            finish, stop_reason = ch["finish_reason"], ch.get("stop_reason")
                if finish is None:
                    raise _Retry("the stream ended without a finish reason")
                ok = True
            except (httpx.TransportError, _Retry) as exc:
                tried.add(u.url)
                self.pool.mark_down(u, str(exc)[:300] or type(exc).__name__)
                self.stats["failovers"] += 1
                if gen_ids:
                    self.stats["resumed"] += 1
                if len(gen_ids) >= max_tokens:
                    finish = "length"
            except asyncio.CancelledError:
                if rid not in self._aborted:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]  # our abort, not the caller's
                finish, ok = "abort", True
            finally:
                self.pool.release(u, ok)
        metrics.finished_time = time.monotonic()
        yield self._output(rid, ids, text, gen_ids, "", [], finish, stop_reason, metrics, finished=True)

    async def _whole(self, rid: str, ids: list[int], params: SamplingParams, max_tokens: int,
                     metrics: RequestMetrics) -> RequestOutput:
        tried: set[str] = set()
        while True:
            u = self.pool.choose(tried)
            ok = False
            try:
                r = await self._client().post(u.url + "/completions", json=self._body(ids, params, max_tokens, False))
                if r.status_code in RETRY_STATUSES:
                    raise _Retry(f"HTTP {r.status_code}")
                if r.status_code != 200:
                    raise ValueError(_error_message(r.content, r.status_code))
                ok = True
                break
            except (httpx.TransportError, _Retry) as exc:
                tried.add(u.url)
                self.pool.mark_down(u, str(exc)[:300] or type(exc).__name__)
                self.stats["failovers"] += 1
            finally:
                self.pool.release(u, ok)
        tok = self.engine.tokenizer
        outs = []
        for i, ch in enumerate(sorted(r.json()["choices"], key=lambda c: c["index"])):
            gen = tok.encode(ch["text"], add_special_tokens=False)
            self.stats["generated_tokens"] += len(gen)
            outs.append(CompletionOutput(i, ch["text"], gen, ch.get("finish_reason") or "stop",
                                         delta_text=ch["text"], delta_token_ids=gen))
        metrics.first_token_time = metrics.finished_time = time.monotonic()
        return RequestOutput(rid, None, ids, outs, True, metrics)

    def _output(self, rid: str, ids: list[int], text: str, gen: list[int], delta: str, delta_ids: list[int],
                finish: str | None, stop_reason: Any, metrics: RequestMetrics, finished: bool = False) -> RequestOutput:
        out = CompletionOutput(0, text, list(gen), finish, stop_reason, delta_text=delta,
                               delta_token_ids=list(delta_ids))
        return RequestOutput(rid, None, ids, [out], finished, metrics)

    def _body(self, ids: list[int], p: SamplingParams, max_tokens: int, stream: bool) -> dict:
        if p.logprobs is not None:
            raise ValueError("logprobs are not supported through an upstream driver")
        model = self.pool.served_model()
        body: dict[str, Any] = {"model": model, "prompt": ids, "max_tokens": max(max_tokens, 1),
                                "temperature": p.temperature, "top_p": p.top_p, "n": p.n, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        optional = {"top_k": p.top_k if p.top_k and p.top_k > 0 else None,
                    "min_p": p.min_p or None, "seed": p.seed,
                    "stop": ([p.stop] if isinstance(p.stop, str) else list(p.stop)) if p.stop else None,
                    "presence_penalty": p.presence_penalty or None, "frequency_penalty": p.frequency_penalty or None,
                    "repetition_penalty": p.repetition_penalty if p.repetition_penalty != 1.0 else None,
                    "min_tokens": p.min_tokens or None, "ignore_eos": p.ignore_eos or None,
                    "logit_bias": {str(k): v for k, v in p.logit_bias.items()} if p.logit_bias else None}
        body.update({k: v for k, v in optional.items() if v is not None})
        s = p.structured
        if s is not None:
            if s.json is not None:
                schema = json.loads(s.json) if isinstance(s.json, str) else s.json
                body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
            elif s.json_object:
                body["response_format"] = {"type": "json_object"}
            else:
                raise ValueError("through an upstream driver, structured output is JSON (schema or object) only")
        return body


class _Retry(Exception):
    """The upstream failed in a way another upstream may not: try the next one."""


def _cancel(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.cancel()


def _error_message(raw: bytes, status: int) -> str:
    try:
        err = json.loads(raw).get("error", {})
        return f"upstream: {err.get('message') or raw[:200]!r}"
    except (ValueError, AttributeError):
        return f"upstream answered HTTP {status}: {raw[:200]!r}"


def build_upstream_llm(urls: list[str], tokenizer_source: Any, *, model: str | None = None,
                       api_key: str | None = None, max_model_len: int | None = None,
                       max_inflight: int = 64) -> UpstreamLLM:
    """The driver with a local copy of the upstream model's tokenizer (an HF dir / hub name / GGUF / builtin)."""
    from llmasos.kernel.llm import load_tokenizer
    from llmasos.models.loader import resolve_model_dir

    tokenizer = load_tokenizer(resolve_model_dir(tokenizer_source))
    if tokenizer is None:
        raise ValueError(f"{tokenizer_source} has no tokenizer: the upstream driver needs the model's tokenizer")
    pool = UpstreamPool(urls, api_key=api_key, model=model)
    return UpstreamLLM(pool, tokenizer, max_model_len=max_model_len, max_inflight=max_inflight)


__all__ = ["Upstream", "UpstreamLLM", "UpstreamPool", "UpstreamUnavailable", "build_upstream_llm"]
