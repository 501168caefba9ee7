"""Every error leaves the server as OpenAI's error JSON with the status its class stands for."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmasos.system.errors import SystemCallError

log = logging.getLogger(__name__)

_TYPES = {400: ("invalid_request_error", "invalid_request"), 401: ("authentication_error", "invalid_api_key"),
          403: ("permission_error", "permission_denied"), 404: ("not_found_error", "not_found"),
          405: ("invalid_request_error", "method_not_allowed"), 413: ("invalid_request_error", "request_too_large"),
          429: ("rate_limit_error", "rate_limited"), 503: ("server_error", "overloaded")}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    etype, default_code = _TYPES.get(status, ("server_error", "server_error"))
    return {"error": {"message": message, "type": etype, "param": param, "code": code or default_code}}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    where = ".".join(loc)
    msg = first.get("msg", "invalid request")
    if first.get("type") == "extra_forbidden":
        msg = f"unrecognized request argument supplied: {where}"
    elif first.get("type") == "json_invalid":
        msg = f"the body is not valid JSON: {first.get('ctx', {}).get('error', msg)}"
    elif where:
        msg = f"{where}: {msg}"
    return msg, where or None


def install(app: FastAPI) -> None:
    @app.exception_handler(SystemCallError)
    async def _syscall_error(request: Request, exc: SystemCallError) -> JSONResponse:
        if exc.status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc.message)
        return JSONResponse(exc.to_dict(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # OpenAI answers a malformed request with 400, not FastAPI's 422.
        msg, param = _validation_message(exc)
        return JSONResponse(error_body(400, msg, param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and msg == "Not Found":
            msg = f"no route {request.method} {request.url.path}"
        return JSONResponse(error_body(exc.status_code, msg), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, f"internal error: {type(exc).__name__}"), status_code=500)
