"""The process table: every LLM call (and every app handler run) is a process with a pid, an owner, a state
and its accounting. `ps`, `kill` and `renice` act on it; quotas are enforced when a process is admitted."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from llmasos.system.errors import InvalidRequest, NotFound, QuotaExceeded
from llmasos.system.manifest import Quotas


class ProcState(StrEnum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"
    KILLED = "killed"
    FAILED = "failed"


LIVE = (ProcState.WAITING, ProcState.RUNNING, ProcState.PREEMPTED)


@dataclass
class Process:
    pid: int
    app: str
    principal: str
    kind: str  # llm | handler | summary
    session: str | None = None
    parent: int | None = None
    priority: int = 0
    state: ProcState = ProcState.WAITING
    tokens_in: int = 0
    tokens_out: int = 0
    queued_at: float = field(default_factory=time.time)
    first_token_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    memory: dict | None = None  # the memory manager's report: kept, summarised, dropped, truncated
    preemptions: int = 0  # times the kernel took its KV blocks back and queued it again
    request_id: str | None = None  # the kernel's id for an llm process

    def as_dict(self) -> dict:
        d = asdict(self)
        d["state"] = self.state.value
        return d


class ProcessTable:
    def __init__(self, history: int = 1000) -> None:
        self._live: dict[int, Process] = {}
        self._history: deque[Process] = deque(maxlen=max(history, 1))
        self._pids = itertools.count(1)
        self._lock = threading.Lock()
        self._tokens: dict[str, deque[tuple[float, int]]] = {}  # app -> (time, tokens) in the last minute
        self.killers: dict[int, Callable[[], None]] = {}  # pid -> how to stop it (abort in kernel, cancel task)
        self.renicers: dict[int, Callable[[int], None]] = {}
        self.listeners: list[Callable[[Process], None]] = []  # told of every process that ends (metrics)

    # -- lifecycle -------------------------------------------------------------------------------------
    def spawn(self, app: str, principal: str, kind: str, *, quotas: Quotas | None = None, session: str | None = None,
              parent: int | None = None, priority: int = 0, tokens_in: int = 0,
              tokens_used: int | None = None) -> Process:
        """`tokens_used`: the app's tokens in the last minute as the shared ledger counts them (all replicas);
        None counts this process table's own charges."""
        with self._lock:
            if quotas is not None and kind == "llm":
                self._check_quotas(app, quotas, tokens_in, tokens_used)
            p = Process(next(self._pids), app, principal, kind, session, parent, priority, tokens_in=tokens_in)
            self._live[p.pid] = p
            return p

    def _check_quotas(self, app: str, q: Quotas, tokens_in: int, tokens_used: int | None) -> None:
        if q.max_concurrent is not None:
            n = sum(1 for p in self._live.values() if p.app == app and p.kind == "llm" and p.state in LIVE)
            if n >= q.max_concurrent:
                raise QuotaExceeded(f"app {app!r} already runs {n} LLM processes (quota max_concurrent={q.max_concurrent})")
        if q.tokens_per_minute is not None:
            used = self.tokens_last_minute(app) if tokens_used is None else tokens_used
            if used + tokens_in > q.tokens_per_minute:
                raise QuotaExceeded(f"app {app!r} used {used} tokens in the last minute; {tokens_in} more would exceed "
                                    f"its quota of {q.tokens_per_minute} tokens per minute")

    def tokens_last_minute(self, app: str) -> int:
        window = self._tokens.get(app)
        if not window:
            return 0
        cutoff = time.time() - 60
        while window and window[0][0] < cutoff:
            window.popleft()
        return sum(n for _, n in window)

    def charge(self, p: Process, tokens: int) -> None:
        with self._lock:
            self._tokens.setdefault(p.app, deque()).append((time.time(), tokens))

    def set_state(self, p: Process, state: ProcState) -> None:
        if p.state in LIVE:
            p.state = state

    def finish(self, p: Process, state: ProcState = ProcState.FINISHED, error: str | None = None) -> None:
        with self._lock:
            if p.state not in LIVE:
                return
            p.state, p.error, p.finished_at = state, error, time.time()
            self._live.pop(p.pid, None)
            self.killers.pop(p.pid, None)
            self.renicers.pop(p.pid, None)
            self._history.append(p)
        for listener in self.listeners:
            listener(p)

    # -- ps / kill / renice ----------------------------------------------------------------------------
    def ps(self, app: str | None = None, state: str | None = None, include_finished: bool = True) -> list[Process]:
        if state is not None and state not in {s.value for s in ProcState}:
            raise InvalidRequest(f"unknown state {state!r}; one of {[s.value for s in ProcState]}", param="state")
        with self._lock:
            procs = list(self._live.values()) + (list(self._history) if include_finished else [])
        return [p for p in sorted(procs, key=lambda p: p.pid)
                if (app is None or p.app == app) and (state is None or p.state.value == state)]

    def get(self, pid: int, app: str | None = None) -> Process:
        """A process by pid; another app's process does not exist for the caller."""
        with self._lock:
            p = self._live.get(pid) or next((h for h in self._history if h.pid == pid), None)
        if p is None or (app is not None and p.app != app):
            raise NotFound(f"no process {pid}")
        return p

    def kill(self, pid: int, app: str | None = None) -> Process:
        p = self.get(pid, app)
        if p.state not in LIVE:
            return p
        for child in [c for c in list(self._live.values()) if c.parent == pid]:
            self.kill(child.pid)
        stop = self.killers.get(pid)
        self.finish(p, ProcState.KILLED)
        if stop is not None:
            stop()
        return p

    def renice(self, pid: int, priority: int, app: str | None = None) -> Process:
        if not isinstance(priority, int) or isinstance(priority, bool) or not -20 <= priority <= 19:
            raise InvalidRequest("priority must be an integer in [-20, 19] (lower runs first)", param="priority")
        p = self.get(pid, app)
        if p.state not in LIVE:
            raise InvalidRequest(f"process {pid} has {p.state.value}; only live processes can be reniced")
        p.priority = priority
        hook = self.renicers.get(pid)
        if hook is not None:
            hook(priority)
        for child in [c for c in list(self._live.values()) if c.parent == pid]:
            self.renice(child.pid, priority)
        return p
