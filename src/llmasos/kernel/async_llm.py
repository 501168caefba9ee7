"""`AsyncLLM`: the engine on a background thread, streaming token deltas to asyncio callers (the server)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from llmasos.kernel.engine import LLMEngine
from llmasos.kernel.outputs import RequestOutput
from llmasos.kernel.sampling_params import SamplingParams

log = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    pass


class AsyncLLM:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._lock = threading.Condition()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="llmasos-engine", daemon=True)
        self._thread.start()

    async def generate(self, prompt: str | list[int], params: SamplingParams | None = None, *,
                       request_id: str | None = None, **kwargs: Any) -> AsyncIterator[RequestOutput]:
        """Yield one `RequestOutput` per step in which the request progressed; the last has `finished`.

        Bad input raises ValueError here, before anything is queued. Leaving the loop early (a client that
        disconnects) aborts the request and frees its KV blocks.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            if self._stopped:
                raise EngineDeadError("engine is shut down")
            rid = self.engine.add_request(prompt, params, request_id=request_id, **kwargs)
            self._streams[rid] = (loop, queue)
            self._lock.notify()
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.abort(rid)

    def abort(self, request_id: str) -> bool:
        """Stop a request now and free its KV blocks; its stream ends with finish_reason "abort".
        False if the request is unknown or already finished."""
        with self._lock:
            final = self.engine.abort_request(request_id)
            target = self._streams.pop(request_id, None)
        if final is not None and target is not None:
            target[0].call_soon_threadsafe(target[1].put_nowait, final)
        return final is not None

    def renice(self, request_id: str, priority: int) -> bool:
        """Change a live request's priority; False if it is unknown or finished."""
        with self._lock:
            return self.engine.renice(request_id, priority)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopped and not self.engine.has_unfinished_requests():
                    self._lock.wait()
                if self._stopped:
                    return
                try:
                    outputs = self.engine.step()
                except Exception as exc:  # keep the OS up: fail the in-flight requests, not the process
                    log.exception("engine step failed")
                    for rid, (loop, q) in list(self._streams.items()):
                        loop.call_soon_threadsafe(q.put_nowait, EngineDeadError(f"engine step failed: {exc}"))
                        self.engine.abort_request(rid)
                    self._streams.clear()
                    continue
                for out in outputs:
                    target = self._streams.get(out.request_id)
                    if target is not None:
                        target[0].call_soon_threadsafe(target[1].put_nowait, out)
                        if out.finished:
                            del self._streams[out.request_id]

    def shutdown(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
        self._thread.join(timeout=10)
