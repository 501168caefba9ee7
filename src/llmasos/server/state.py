"""What every route needs, passed in once (no globals): the OS, the authenticator, the served model ids."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmasos.server.auth import Authenticator, Caller
from llmasos.system.errors import InvalidRequest, NotFound, Overloaded


@dataclass
class ServerState:
    os: Any  # llmasos.system.os.OS
    auth: Authenticator
    chat_model: str
    embed_model: str
    max_pending: int
    started: float
    metrics: Any = None  # server.metrics.Metrics
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def syscalls(self) -> Any:
        return self.os.syscalls

    async def call(self, caller: Caller, name: str, args: dict) -> Any:
        return await self.os.syscalls.call(caller.principal, name, args, app=caller.scope())

    def stream(self, caller: Caller, name: str, args: dict) -> Any:
        return self.os.syscalls.stream(caller.principal, name, args, app=caller.scope())

    def admit(self) -> None:
        """Refuse new LLM work (503) when the kernel already has `max_pending` requests."""
        llm = self.os.llm
        if llm is None:
            raise Overloaded("this server was booted without a model")
        if llm.num_live() >= self.max_pending:
            raise Overloaded(f"{llm.num_live()} requests are queued or running (limit {self.max_pending}); "
                             f"retry shortly")

    def check_chat_model(self, model: str) -> None:
        if model == self.chat_model:
            return
        if model == self.embed_model:
            raise InvalidRequest(f"{model!r} is an embedding model: use /v1/embeddings", param="model",
                                 code="model_not_supported")
        raise NotFound(f"the model {model!r} does not exist; this server has {self.chat_model!r} and "
                       f"{self.embed_model!r}", param="model", code="model_not_found")


def chat_model_id(os_: Any) -> str:
    """A recognisable id for the served chat model: the packaged default by name, else the file or dir name."""
    from llmasos.models.default_model import (
        BUILTIN_NAME,
        DEFAULT_MODEL_NAME,
        builtin_model_dir,
        packaged_gguf,
    )

    pool = getattr(os_.llm, "pool", None)
    if pool is not None:  # upstream driver: the id the upstreams serve
        return pool.served_model() or "upstream"
    name = os_.config.model.name
    eng = getattr(os_.llm, "engine", None)
    source = getattr(eng, "model_source", None)
    if name and not Path(name).exists():
        return name  # a hub name: the id its users already know
    if source is not None:
        source = Path(source)
        if source == packaged_gguf():
            return DEFAULT_MODEL_NAME
        if source == builtin_model_dir():
            return f"llmasos-{BUILTIN_NAME}"
        return source.stem if source.suffix == ".gguf" else source.name
    return name or DEFAULT_MODEL_NAME
