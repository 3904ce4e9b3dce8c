"""The request body size limit: a body over the limit is answered 413 before any route reads it.

A body with a Content-Length is judged by it, unread. A chunked body (no Content-Length) is read here,
counting, before the app sees a byte of it: a client cannot stream gigabytes into a JSON parser by
leaving the length out. Past the limit the rest is drained (up to a ceiling) so the client, still
sending, can read the answer, which names the size and the limit.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DRAIN_CEILING_FACTOR = 16
"""A chunked body is counted (and discarded) up to this many times the limit; beyond, the connection closes."""


class BodySizeLimit:
    """ASGI middleware refusing request bodies over `limit` bytes with 413 `{"detail": ...}`."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None:
            # The server delivers exactly the declared length, so only the declaration needs checking.
            if declared > self.limit:
                await _too_large(f"request body is {declared} bytes; the limit is {self.limit}", scope, send)
            else:
                await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before it finished sending: no one to answer
            body += message.get("body", b"")
            if len(body) > self.limit:
                await self._refuse_chunked(len(body), message, scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replaying(bytes(body), receive), send)

    async def _refuse_chunked(self, received: int, last: Message, scope: Scope, receive: Receive, send: Send) -> None:
        ceiling = DRAIN_CEILING_FACTOR * self.limit
        while last.get("more_body", False) and received <= ceiling:
            last = await receive()
            if last["type"] == "http.disconnect":
                return
            received += len(last.get("body", b""))
        size = f"over {ceiling}" if last.get("more_body", False) else str(received)
        await _too_large(f"request body is {size} bytes; the limit is {self.limit}", scope, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length before the app is called
    return None


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands over the body read already, then whatever the client sends next (a disconnect)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _too_large(detail: str, scope: Scope, send: Send) -> None:
    # Connection: close, since the rest of an unread body would otherwise be taken for the next request.
    response = JSONResponse({"detail": detail}, status_code=413, headers={"Connection": "close"})

    async def nothing() -> Message:
        return {"type": "http.disconnect"}

    await response(scope, nothing, send)
