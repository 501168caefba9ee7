"""`create_app(os)`: the FastAPI application over one OS — OpenAI routes, OS routes, health, metrics and the
web console. Everything the routes need is passed in; several servers can live in one process."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llmasos import __version__
from llmasos.server import errors
from llmasos.server.auth import Authenticator
from llmasos.server.limits import BodyLimit
from llmasos.server.metrics import Metrics
from llmasos.server.openai_api import openai_router
from llmasos.server.os_api import os_router
from llmasos.server.state import ServerState, chat_model_id

STATIC = Path(__file__).parent / "static"


def create_app(os_: Any) -> FastAPI:
    cfg = os_.config.server
    os_.services.apps.ensure_client(cfg.client_app)
    auth = Authenticator(os_.services.keys, cfg.client_app, os_.services.apps.ensure_client)
    st = ServerState(os=os_, auth=auth, chat_model=chat_model_id(os_) if os_.llm is not None else "none",
                     embed_model=os_.embedder.id, max_pending=cfg.max_pending, started=time.time())
    st.metrics = Metrics(os_)
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        st.metrics.close()  # the OS may outlive this server

    app = FastAPI(title="LLMasOS", version=__version__, lifespan=lifespan,
                  description="An operating system for LLM applications: OpenAI-compatible API, apps, processes, "
                              "memory, storage and audit.")
    app.state.llmasos = st
    errors.install(app)
    app.include_router(openai_router(st))
    app.include_router(os_router(st))

    @app.get("/healthz", tags=["Health"])
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["Health"])
    async def readyz() -> Response:
        llm = os_.llm
        thread = getattr(llm, "_thread", None)
        if llm is None or (thread is not None and not thread.is_alive()):
            return JSONResponse({"status": "not ready", "reason": "the model is not running"}, status_code=503)
        return JSONResponse({"status": "ready", "model": st.chat_model})

    @app.get("/metrics", tags=["Health"])
    async def metrics() -> Response:
        return Response(generate_latest(st.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if (STATIC / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        async def console() -> FileResponse:
            return FileResponse(STATIC / "index.html")

    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    return app
