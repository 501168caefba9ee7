"""Helpers several test modules share (pytest puts this folder on sys.path: `from support import ...`)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SDK_DOC = Path(__file__).resolve().parent.parent / "docs" / "sdk.md"
CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(os.environ.get("LLMASOS_SCREENSHOTS") or Path(__file__).parent / ".screenshots")
WAIT_MS = 60_000  # generous: a loaded CI machine decodes the built-in model slowly


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


def open_page(pg: Any, url: str, view: str) -> None:
    """The console at `url` on one of its views, once the sidebar shows it active."""
    pg.goto(f"{url}/#/{view}")
    pg.wait_for_selector(f"[data-testid=nav-{view}].active")


def shot(pg: Any, name: str) -> None:
    """A screenshot of the page in $LLMASOS_SCREENSHOTS (default tests/.screenshots/)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"console-{name}.png"))


def make_pdf(text: str) -> bytes:
    """A one-page PDF with `text` in Helvetica, its cross-reference table computed."""
    stream = f"BT /F1 12 Tf 10 50 Td ({text}) Tj ET"
    objs = [
        "<</Type/Catalog/Pages 2 0 R>>",
        "<</Type/Pages/Kids[3 0 R]/Count 1>>",
        "<</Type/Page/Parent 2 0 R/MediaBox[0 0 300 100]/Contents 4 0 R/Resources<</Font<</F1 5 0 R>>>>>>",
        f"<</Length {len(stream)}>>stream\n{stream}\nendstream",
        "<</Type/Font/Subtype/Type1/BaseFont/Helvetica>>",
    ]
    out, offsets = "%PDF-1.4\n", []
    for i, o in enumerate(objs, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj{o}endobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n" + "".join(
        f"{o:010d} 00000 n \n" for o in offsets
    )
    out += f"trailer<</Size {len(objs) + 1}/Root 1 0 R>>\nstartxref\n{xref}\n%%EOF\n"
    return out.encode("latin-1")
