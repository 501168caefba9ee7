"""`create_app(os)`: the FastAPI application over one OS — OpenAI routes, OS routes, health, metrics and the
web console. Everything the routes need is passed in; several servers can live in one process."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Response
from fastapi.openapi.utils import get_openapi
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
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


ERRORS = {"400": "Bad request (malformed JSON, wrong types, unknown fields, values out of range)",
          "401": "Missing or invalid API key", "403": "The app's manifest lacks the permission",
          "404": "Unknown model, route or object (another app's objects do not exist)",
          "413": "Prompt longer than the context window, or body too large",
          "429": "The app's quota is exhausted", "503": "Overloaded, or no model"}
STREAMING = {("post", "/v1/chat/completions"), ("post", "/v1/completions"), ("post", "/v1/apps/{app}/chat"),
             ("post", "/v1/syscalls/{name}/stream"), ("post", "/v1/apps/{app}/handlers/{handler}/stream")}


def _openapi(app: FastAPI) -> dict:
    """The spec as the server behaves: OpenAI error JSON with the statuses it sends (never FastAPI's 422),
    event streams where `stream` is set, Prometheus text for /metrics."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        comps.pop(unused, None)
    comps["ErrorResponse"] = {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            for code, desc in ERRORS.items():
                responses.setdefault(code, {"description": desc, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ErrorResponse"}}}})
            if (method, path) in STREAMING:
                # One server-sent event per item: `data:` holds a JSON object, the last is `[DONE]`.
                responses["200"].setdefault("content", {})["text/event-stream"] = {"schema": {
                    "type": "object", "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}}
    schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
    app.openapi_schema = schema
    return schema
