"""The one place where errors become HTTP answers: core and repository exceptions, bad requests,
and a database too busy to answer in time.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from sweeper import SpecError, SweeperError, UnknownTrialError

from api.queries import QueryError
from api.security_headers import DEFAULT_HEADERS
from api.storage import LeaseConflictError, SweepNotFoundError, SweepStateError

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1

# Most specific first: the first class an error is an instance of decides its status.
_STATUS_OF: dict[type[SweeperError], int] = {
    SweepNotFoundError: status.HTTP_404_NOT_FOUND,
    UnknownTrialError: status.HTTP_404_NOT_FOUND,
    LeaseConflictError: status.HTTP_409_CONFLICT,
    SweepStateError: status.HTTP_409_CONFLICT,
    # Any other deliberate core error is a request the core refused.
    SweeperError: status.HTTP_400_BAD_REQUEST,
}


def spec_problems(error: SpecError) -> list[dict[str, Any]]:
    """SpecError's problems in FastAPI's validation-error shape, rooted at the request body; each with the
    `line` of a YAML body it was written on, where known."""
    return [{"loc": ["body", *map(_loc_part, path)], "msg": message, "type": "value_error",
             **({} if line is None else {"line": line})}
            for (path, message), line in zip(error.problems, error.line_numbers)]


def _loc_part(part: Any) -> str | int:
    # A loc holds strings and integers; a YAML spec's keys may also be bools, floats or null.
    return part if isinstance(part, str) or (isinstance(part, int) and not isinstance(part, bool)) else str(part)


async def _query_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, QueryError)
    return JSONResponse({"detail": [{"loc": ["query", error.parameter], "msg": _json_safe(str(error)),
                                     "type": "value_error"}]}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    # A bug: the server still logs it with its traceback (Starlette re-raises it after this answer), and
    # the client gets the one error shape, without internals. This answer is sent from outside every
    # middleware (Starlette's ServerErrorMiddleware), so it carries the security headers itself.
    return JSONResponse({"detail": "internal server error"}, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
                        headers=DEFAULT_HEADERS)


async def _spec_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, SpecError)
    return JSONResponse({"detail": _json_safe(spec_problems(error))},
                        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _core_error(request: Request, error: Exception) -> JSONResponse:
    code = next(code for kind, code in _STATUS_OF.items() if isinstance(error, kind))
    body: dict[str, Any] = {"detail": _json_safe(str(error))}
    if isinstance(error, LeaseConflictError):
        body["reason"] = error.reason.value  # for the worker to act on, rather than parse the message
    return JSONResponse(body, status_code=code)


_LOGIN_PATH = "/session"
"""api.routers.session's path: the one request body that holds a token."""


async def _request_validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    # FastAPI's own answer, except that a NaN or a lone surrogate echoed back in `input` must not make
    # the JSON encoder (which refuses them) turn a 422 into a 500.
    errors = error.errors()
    if request.url.path.rstrip("/").endswith(_LOGIN_PATH):
        # The login's body is a token: echoed back, a mistyped one would end up in logs and error pages.
        errors = [{name: value for name, value in problem.items() if name != "input"} for problem in errors]
    detail = _json_safe(jsonable_encoder(errors))
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


_ABORTED_TO_RETRY = frozenset({"40P01", "40001"})
"""PostgreSQL's SQLSTATEs for a transaction it rolled back so that others go on: a deadlock broken,
a serialization failure."""


async def _database_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, OperationalError)
    answer = busy_database_answer(error, request.method, request.url.path)
    if answer is None:
        raise error
    return answer


def busy_database_answer(error: OperationalError, method: str, path: str) -> JSONResponse | None:
    """503 with Retry-After when `error` says SQLite's write lock stayed taken past busy_timeout, or that
    PostgreSQL chose this transaction to break a deadlock (or a serialization failure): it rolled back, so
    the request changed nothing and is safe to send again. None for any other database error. Used by the
    routes' handler and by the token gate, which runs before any route."""
    aborted = getattr(error.orig, "sqlstate", None) in _ABORTED_TO_RETRY
    if not aborted and "database is locked" not in str(error.orig):
        return None
    logger.warning("%s %s: %s", method, path, str(error.orig).splitlines()[0] if aborted else "database is locked")
    return JSONResponse({"detail": "the database is busy; retry the request"},
                        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


async def _pool_exhausted(request: Request, error: Exception) -> JSONResponse:
    # Every pooled connection stayed taken past the pool's timeout (a fleet larger than this server
    # process carries): nothing was read or written, so the request is safe to send again.
    logger.warning("%s %s: no database connection came free in time: %s", request.method, request.url.path, error)
    return JSONResponse({"detail": "the database is busy; retry the request"},
                        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SpecError, _spec_error)
    app.add_exception_handler(QueryError, _query_error)
    app.add_exception_handler(Exception, _unexpected_error)
    for kind in _STATUS_OF:
        app.add_exception_handler(kind, _core_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(OperationalError, _database_error)
    app.add_exception_handler(PoolTimeoutError, _pool_exhausted)


def _json_safe(value: Any) -> Any:
    """`value` with non-finite floats as null and lone surrogates escaped, so it always encodes."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_json_safe(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value
