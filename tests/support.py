"""Helpers several test modules share (pytest puts this folder on sys.path: `from support import ...`)."""

from __future__ import annotations

import re
import socket
import time
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
