"""Helpers several test modules share (pytest puts this folder on sys.path: `from support import ...`)."""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SDK_DOC = Path(__file__).resolve().parent.parent / "docs" / "sdk.md"


def example_source() -> str:
    """The complete example app of docs/sdk.md, exactly as printed there."""
    blocks = re.findall(r"```python\n(.*?)```", SDK_DOC.read_text(), re.S)
    return next(b for b in blocks if "class Notes(App)" in b)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_idle(os_: Any, timeout: float = 30) -> None:
    """Until the kernel has nothing live (an abort is applied between two steps)."""
    deadline = time.monotonic() + timeout
    while os_.llm.num_live() and time.monotonic() < deadline:
        time.sleep(0.02)
    os_.llm.submit(lambda e: None).result(timeout=timeout)


@contextlib.contextmanager
def builtin_server(data_dir: Path, embedder: Any) -> Iterator[Any]:
    """A real server on an OS of its own on the built-in model; the handle carries the OS as `.os`."""
    from llmasos.server import start_server
    from llmasos.system.os import OS

    os_ = OS(data_dir=data_dir, embedder=embedder,
             model={"name": "builtin", "dtype": "float32", "kv_cache_memory": 64 << 20, "max_num_seqs": 64})
    try:
        handle = start_server(os_)
        handle.os = os_
        try:
            yield handle
        finally:
            handle.stop()
    finally:
        os_.shutdown()
