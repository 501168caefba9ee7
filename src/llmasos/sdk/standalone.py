"""An app's core used as a plain library, with no server: `Standalone(app)` boots a private OS in this process
(the embedded default model, the offline default embedder), installs the app, and hands out its context.

    rt = Standalone(Writer.app())                      # or Standalone(app, model={"name": "builtin"})
    out = rt.run(rt.ctx.llm.chat([{"role": "user", "content": "Hi"}]))

The library still reaches the model only through the SDK's system calls, exactly as it does inside a server.
"""

from __future__ import annotations

import atexit
import tempfile
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from llmasos.sdk.app import App
from llmasos.sdk.context import AppContext


class Standalone:
    def __init__(self, app: App, data_dir: str | Path | None = None, **overrides: Any) -> None:
        from llmasos.system.os import OS

        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"llmasos-{app.manifest.name}-")
            data_dir = self._tmp.name
        overrides.setdefault("apps", [])
        self.os = OS(data_dir=data_dir, **overrides)
        self.os.install(app)
        self.app = app
        self.ctx: AppContext = self.os.context(app.manifest.name)
        self._closed = False
        atexit.register(self.close)

    def run(self, coro: Coroutine) -> Any:
        """Run one of the app's coroutines (its handlers, `ctx` calls) to completion, synchronously."""
        return self.os.run(coro)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.os.shutdown()
        if self._tmp is not None:
            self._tmp.cleanup()


_shared: dict[tuple, Standalone] = {}
_lock = threading.Lock()


def shared_runtime(app: App, **overrides: Any) -> Standalone:
    """One private OS per (app, settings) in this process: library objects made without a context share it
    instead of each booting a model."""
    key = (app.manifest.name, repr(sorted(overrides.items())))
    with _lock:
        rt = _shared.get(key)
        if rt is None or rt._closed:
            rt = _shared[key] = Standalone(app, **overrides)
        return rt
