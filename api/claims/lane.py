"""The worker lane: claims and completions answered without the router, the rest of the app untouched.

Every worker calls claim and complete between every two trials; with dozens of workers these two
requests are most of what the server does. Through FastAPI's router each costs more than its share of
a batched transaction (api.claims.desk): route matching over every route, dependency resolution, the
body parsed, checked and validated in steps. This middleware recognises the two requests by method and
path and answers them with the routes' own answer functions, after one parse and one validation.

It sits inside the token gate and the body size limit (api.app adds it first), so both still apply.
Anything it does not take as it is goes on to the router unchanged, its body replayed: another
content type, JSON with a value the strict-JSON rule refuses, a body that fails validation, an id
past 64 bits. So every error a client can cause is the router's own answer, and the routes stay the
documented contract (OpenAPI, the gate's worker-route check). Errors of the calls themselves (a late
worker's 409, a busy database's 503) get the app's exception handlers, like a route's would.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sweeper.messages import ClaimRequest, CompleteReport

from api.json_guard import INT64_MAX, is_json_media_type, unstorable_values
from api.claims.answers import claim_answer, complete_answer

Answer = Callable[[Scope, Any], Awaitable[Response]]


class WorkerLane:
    """ASGI middleware: `POST {prefix}/trials/claim` and `POST {prefix}/trials/{id}/complete`, answered directly."""

    def __init__(self, app: ASGIApp, prefix: str):
        self.app = app
        self._claim_path = f"{prefix}/trials/claim"
        self._complete_path = re.compile(rf"{re.escape(prefix)}/trials/(\d{{1,19}})/complete")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self._lane(scope)
        if lane is None:
            await self.app(scope, receive, send)
            return
        read = await _read_body(receive)
        if read is None:
            return  # the client left before it finished sending: no one to answer
        body, receive = read
        request = _parsed(body, lane[0])
        if request is None:  # the router answers, with its own error
            await self.app(scope, receive, send)
            return
        try:
            response = await lane[1](scope, request)
        except Exception as error:
            response = await _handled(scope, error)
        await response(scope, receive, send)

    def _lane(self, scope: Scope) -> tuple[type[Any], Answer] | None:
        if scope["type"] != "http" or scope["method"] != "POST" or not _sends_json(scope):
            return None
        path = scope["path"]
        if path == self._claim_path:
            return ClaimRequest, _claim
        match = self._complete_path.fullmatch(path)
        if match is not None and int(match[1]) <= INT64_MAX:
            trial_id = int(match[1])
            return CompleteReport, lambda scope, report: _complete(scope, trial_id, report)
        return None


async def _claim(scope: Scope, request: ClaimRequest) -> Response:
    state = scope["app"].state
    return await claim_answer(request, state.desk, state.context, state.metrics)


async def _complete(scope: Scope, trial_id: int, report: CompleteReport) -> Response:
    return await complete_answer(trial_id, report, scope["app"].state.desk)


def _parsed(body: bytes, model: type[Any]) -> Any | None:
    """The validated request, or None for anything the router should judge (and answer) itself."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if any(True for _ in unstorable_values(data)):
        return None
    try:
        return model.model_validate(data)
    except ValidationError:
        return None


def _sends_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return is_json_media_type(value.decode("latin-1"))
    return False


async def _read_body(receive: Receive) -> tuple[bytes, Receive] | None:
    """The whole body, and a `receive` that gives it again (for the router, when it answers instead);
    None if the client disconnected."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return body, replay


async def _handled(scope: Scope, error: Exception) -> Response:
    """The app's exception handler's answer to `error`, as Starlette's ExceptionMiddleware would pick it."""
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = scope["app"].exception_handlers
    for kind in type(error).__mro__:
        if kind is Exception:  # a bug: raised, so that the server logs it and answers 500 in the one shape
            break
        handler = handlers.get(kind)
        if handler is not None:
            return await handler(Request(scope), error)
    raise error
