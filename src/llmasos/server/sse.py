"""Server-sent events: surface an error before the first event as a plain HTTP error, stream the rest, and
abort the work when the client goes away."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from fastapi.responses import StreamingResponse

from llmasos.system.errors import SystemCallError

DONE = b"data: [DONE]\n\n"


def event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


async def sse_response(items: AsyncIterator[Any], render: Callable[[Any], Iterable[bytes]],
                       closing: Callable[[], Iterable[bytes]] = lambda: (), done: bool = True) -> StreamingResponse:
    """Pull the first item now, so that a refused request (quota, bad input, context too long) gets its HTTP
    status; then stream. A client that disconnects cancels the body, which closes `items`: the request is
    aborted in the kernel and its KV blocks freed."""
    it = items.__aiter__()
    try:
        first = await it.__anext__()
    except StopAsyncIteration:
        first = _END
    except BaseException:
        await _close(it)
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            if first is not _END:
                for chunk in render(first):
                    yield chunk
                async for item in it:
                    for chunk in render(item):
                        yield chunk
            for chunk in closing():
                yield chunk
        except SystemCallError as exc:
            yield event(exc.to_dict())
        finally:
            await _close(it)
        if done:
            yield DONE

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


_END = object()


async def _close(it: Any) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()
