"""Running the server: on the OS's own event loop (one loop for the API, the syscalls and the kernel's
streams), either blocking (`llmasos serve`) or in the background (tests, embedding)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Any

import uvicorn

from llmasos.server.app import create_app

log = logging.getLogger(__name__)


def bind_host(os_: Any, host: str) -> tuple[str, str | None]:
    """With no API keys the server is open to whoever reaches it: then it binds to localhost only."""
    if os_.services.keys.any_keys() or _is_loopback(host):
        return host, None
    return "127.0.0.1", (f"no API keys exist, so the server binds to 127.0.0.1 only (not {host}); create one with "
                         f"`llmasos keys create --app NAME` to serve other machines")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServerHandle:
    url: str
    server: uvicorn.Server
    future: Any
    app: Any

    def stop(self, timeout: float = 15) -> None:
        self.server.should_exit = True
        with contextlib.suppress(Exception):  # already stopped, or stopped with an error that was logged
            self.future.result(timeout=timeout)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _server(os_: Any, host: str, port: int, log_level: str) -> tuple[uvicorn.Server, Any]:
    app = create_app(os_)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", access_log=False,
                            timeout_keep_alive=5, timeout_graceful_shutdown=5, loop="asyncio")
    return uvicorn.Server(config), app


def start_server(os_: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> ServerHandle:
    """Serve in the background on the OS's loop; returns once it accepts connections (port 0: any free one)."""
    host, note = bind_host(os_, host)
    if note:
        log.warning(note)
    server, app = _server(os_, host, port, log_level)
    fut = os_.submit(server.serve())
    deadline = time.monotonic() + 60
    while not server.started:
        if fut.done():
            fut.result()
            raise RuntimeError("the server stopped while starting")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the server did not start within 60 s")
        time.sleep(0.01)
    sock = server.servers[0].sockets[0].getsockname()
    return ServerHandle(f"http://{_url_host(host)}:{sock[1]}", server, fut, app)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def serve(os_: Any, host: str, port: int, *, on_ready: Any = None, log_level: str = "info") -> None:
    """Serve until Ctrl-C (or SIGTERM, which a container sends)."""
    import signal
    import threading

    handle = start_server(os_, host, port, log_level=log_level)
    if on_ready is not None:
        on_ready(handle)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set() and not handle.future.done():
        stop.wait(0.5)
    handle.stop()
