"""The errors a system call can raise. Each carries the HTTP status and OpenAI error type the API maps it to,
so every layer above (SDK, server, CLI) reports the same failure the same way."""

from __future__ import annotations


class SystemCallError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.param = param

    def to_dict(self) -> dict:
        """OpenAI's error JSON body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(SystemCallError, ValueError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class AuthenticationError(SystemCallError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class PermissionDenied(SystemCallError):
    status, type, code = 403, "permission_error", "permission_denied"


class NotFound(SystemCallError, LookupError):
    """Also what another app's objects look like: they do not exist for the caller."""

    status, type, code = 404, "not_found_error", "not_found"


class ContextTooLong(SystemCallError, ValueError):
    status, type, code = 413, "invalid_request_error", "context_length_exceeded"


class QuotaExceeded(SystemCallError):
    status, type, code = 429, "rate_limit_error", "quota_exceeded"


class Overloaded(SystemCallError):
    status, type, code = 503, "server_error", "overloaded"


class Refused(SystemCallError):
    """A guard refused the content (PII policy `refuse`, an untrusted side-effect call without consent)."""

    status, type, code = 400, "invalid_request_error", "content_refused"


class ProcessFailed(SystemCallError):
    """An app handler raised or ran past its timeout; its process is marked failed, the OS keeps running."""

    status, type, code = 500, "server_error", "app_failed"


_BY_STATUS: dict[int, type[SystemCallError]] = {400: InvalidRequest, 401: AuthenticationError, 403: PermissionDenied,
                                                404: NotFound, 413: ContextTooLong, 429: QuotaExceeded,
                                                503: Overloaded}


_BY_CODE: dict[str | None, type[SystemCallError]] = {
    c.code: c for c in (InvalidRequest, AuthenticationError, PermissionDenied, NotFound, ContextTooLong,
                        QuotaExceeded, Overloaded, Refused, ProcessFailed)}


def from_response(status: int, body: object) -> SystemCallError:
    """Rebuild the error a server sent (OpenAI error JSON), so a remote caller catches the same class."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        err = {"message": str(body)[:500]}
    code = err.get("code")
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status, SystemCallError)
    exc = cls(str(err.get("message") or f"HTTP {status}"), code=code, param=err.get("param"))
    if cls is SystemCallError:
        exc.status = status
    return exc
