"""`AsyncLLM`: the engine on a background thread, streaming token deltas to asyncio callers (the server).

The engine thread owns the engine: callers never take a lock that a step holds. New requests, aborts and
renices go into an inbox that the engine thread drains between steps, so the event loop never waits for a
step, and text prompts are tokenised in a worker thread before they reach the inbox.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
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
        # Guards only the inbox, the stream table and the stop flag; never held while the engine steps.
        self._cv = threading.Condition()
        self._inbox: deque[Callable[[], None]] = deque()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopped = False
        self._prefix = uuid.uuid4().hex[:8]
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._loop, name="llmasos-engine", daemon=True)
        self._thread.start()

    async def generate(self, prompt: str | list[int], params: SamplingParams | None = None, *,
                       request_id: str | None = None, **kwargs: Any) -> AsyncIterator[RequestOutput]:
        """Yield one `RequestOutput` per step in which the request progressed; the last has `finished`.

        Bad input raises ValueError on the first iteration, before anything is generated. Leaving the loop
        early (a client that disconnects) aborts the request and frees its KV blocks.
        """
        loop = asyncio.get_running_loop()
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            # Tokenising a long prompt takes milliseconds: not on the event loop that streams everyone else.
            prompt = await asyncio.to_thread(self.engine.encode, prompt, kwargs.pop("add_special_tokens", True))
        rid = request_id if request_id is not None else f"req-{self._prefix}-{next(self._ids)}"
        queue: asyncio.Queue = asyncio.Queue()
        with self._cv:
            if self._stopped:
                raise EngineDeadError("engine is shut down")
            if rid in self._streams:
                raise ValueError(f"request id {rid!r} is already in use")
            self._streams[rid] = (loop, queue)
            self._inbox.append(lambda: self._add(rid, prompt, params, kwargs))
            self._cv.notify()
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.abort(rid)

    def abort(self, request_id: str) -> bool:
        """Stop a request and free its KV blocks; its stream ends with finish_reason "abort". False if the
        request is unknown or already finished. Called outside an event loop it returns once the blocks are
        free; on an event loop it only queues the abort (the engine thread applies it before its next step)."""
        return self._command(request_id, lambda: self._abort(request_id))

    def renice(self, request_id: str, priority: int) -> bool:
        """Change a live request's priority from the next step on; False if it is unknown or finished. Waits
        for the engine thread like `abort`."""
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError("priority must be an integer (lower runs first)")
        return self._command(request_id, lambda: self.engine.renice(request_id, priority))

    def submit(self, fn: Callable[[LLMEngine], Any]) -> concurrent.futures.Future:
        """Run `fn(engine)` on the engine thread between two steps (anything that changes engine state)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(self.engine))
                except BaseException as exc:
                    fut.set_exception(exc)

        with self._cv:
            if self._stopped:
                raise EngineDeadError("engine is shut down")
            self._inbox.append(run)
            self._cv.notify()
        return fut

    async def settle(self) -> None:
        """Return once everything queued before this call (aborts above all) has been applied."""
        await asyncio.wrap_future(self.submit(lambda engine: None))

    def num_live(self) -> int:
        """Requests queued or running (the streams still open)."""
        with self._cv:
            return len(self._streams)

    # -- the engine thread -----------------------------------------------------------------------------
    def _command(self, request_id: str, fn: Callable[[], Any]) -> bool:
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        with self._cv:
            if request_id not in self._streams or self._stopped:
                return False
            self._inbox.append(run)
            self._cv.notify()
        if threading.current_thread() is not self._thread and not _on_event_loop():
            done.wait(timeout=60)
        return True

    def _post(self, rid: str, item: Any, *, last: bool) -> None:
        with self._cv:
            target = self._streams.pop(rid, None) if last else self._streams.get(rid)
        if target is not None:
            with contextlib.suppress(RuntimeError):  # the caller's event loop is gone: nobody is listening
                target[0].call_soon_threadsafe(target[1].put_nowait, item)

    def _add(self, rid: str, prompt: list[int], params: SamplingParams | None, kwargs: dict) -> None:
        try:
            self.engine.add_request(prompt, params, request_id=rid, **kwargs)
        except (ValueError, TypeError) as exc:
            self._post(rid, ValueError(str(exc)) if isinstance(exc, TypeError) else exc, last=True)

    def _abort(self, rid: str) -> None:
        final = self.engine.abort_request(rid)
        if final is not None:
            self._post(rid, final, last=True)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopped and not self._inbox and not self.engine.has_unfinished_requests():
                    self._cv.wait()
                if self._stopped:
                    break
                commands = list(self._inbox)
                self._inbox.clear()
            for cmd in commands:
                try:
                    cmd()
                except Exception:
                    log.exception("engine command failed")
            if not self.engine.has_unfinished_requests():
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # keep the OS up: fail the in-flight requests, not the process
                log.exception("engine step failed")
                for rid in list(self.engine.requests):
                    self.engine.abort_request(rid)
                    self._post(rid, EngineDeadError(f"engine step failed: {exc}"), last=True)
                continue
            for out in outputs:
                self._post(out.request_id, out, last=out.finished)
        # Shut down: whoever still waits gets an error instead of hanging.
        with self._cv:
            streams, self._streams = self._streams, {}
            pending, self._inbox = list(self._inbox), deque()
        for loop, q in streams.values():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(q.put_nowait, EngineDeadError("engine is shut down"))
        del pending

    def shutdown(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        self._thread.join(timeout=10)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
