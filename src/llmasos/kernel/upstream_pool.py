"""A pool of OpenAI-compatible upstream servers (vLLM, SGLang, Ollama, llama.cpp, another LLMasOS): health
checks, least-loaded choice, and the context window they share."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import httpx

log = logging.getLogger(__name__)


class UpstreamUnavailable(RuntimeError):
    """No healthy upstream could take (or finish) the request."""


@dataclass
class Upstream:
    url: str  # the OpenAI base URL, e.g. http://vllm-0:8000/v1
    healthy: bool = True
    inflight: int = 0
    served: int = 0
    failures: int = 0
    last_error: str | None = None
    checked_at: float = 0.0
    model: str | None = None
    max_model_len: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def info(self) -> dict:
        return {"url": self.url, "healthy": self.healthy, "inflight": self.inflight, "served": self.served,
                "failures": self.failures, "last_error": self.last_error, "model": self.model}


class UpstreamPool:
    def __init__(self, urls: list[str], api_key: str | None = None, model: str | None = None,
                 check_interval: float = 2.0, timeout: float = 5.0) -> None:
        if not urls:
            raise ValueError("an upstream driver needs at least one upstream URL")
        self.upstreams = [Upstream(u.rstrip("/")) for u in urls]
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model = model
        self.timeout = timeout
        self.check_interval = check_interval
        self._rr = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        for u in self.upstreams:
            self.check(u)
        self._thread = threading.Thread(target=self._checker, name="llmasos-upstream-health", daemon=True)
        self._thread.start()

    # -- health ----------------------------------------------------------------------------------------
    def check(self, u: Upstream) -> bool:
        """GET {url}/models: up, and which model it serves (and its window, where it says)."""
        try:
            r = httpx.get(u.url + "/models", headers=self.headers, timeout=self.timeout)
            r.raise_for_status()
            models = r.json().get("data") or []
            chosen = next((m for m in models if m.get("id") == self.model), models[0] if models else None)
            if chosen is None or (self.model is not None and chosen.get("id") != self.model):
                raise ValueError(f"does not serve {self.model!r}")
            u.model = chosen["id"]
            u.max_model_len = chosen.get("max_model_len") or u.max_model_len
            if not u.healthy:
                log.warning("upstream %s is back", u.url)
            u.healthy, u.last_error = True, None
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            self.mark_down(u, f"health check: {exc}")
        u.checked_at = time.time()
        return u.healthy

    def mark_down(self, u: Upstream, error: str) -> None:
        if u.healthy:
            log.warning("upstream %s is down: %s", u.url, error)
        u.healthy, u.last_error = False, error
        u.failures += 1

    def _checker(self) -> None:
        while not self._stop.wait(self.check_interval):
            for u in self.upstreams:
                self.check(u)

    # -- routing ---------------------------------------------------------------------------------------
    def choose(self, exclude: set[str] = frozenset()) -> Upstream:  # type: ignore[assignment]
        """The healthy upstream with the fewest requests in flight (round-robin among equals)."""
        with self._lock:
            ups = [u for u in self.upstreams if u.healthy and u.url not in exclude]
            if not ups:
                raise UpstreamUnavailable("no healthy upstream: " + "; ".join(
                    f"{u.url}: {u.last_error or 'excluded'}" for u in self.upstreams))
            least = min(u.inflight for u in ups)
            ties = [u for u in ups if u.inflight == least]
            self._rr += 1
            u = ties[self._rr % len(ties)]
            u.inflight += 1
            return u

    def release(self, u: Upstream, ok: bool) -> None:
        with self._lock:
            u.inflight -= 1
            if ok:
                u.served += 1

    @property
    def max_model_len(self) -> int | None:
        lens = [u.max_model_len for u in self.upstreams if u.max_model_len]
        return min(lens) if lens else None

    def served_model(self) -> str | None:
        return next((u.model for u in self.upstreams if u.model), self.model)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
