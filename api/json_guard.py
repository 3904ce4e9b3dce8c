"""Request bodies that are valid JSON but that no database or TensorBoard file can hold become 422s.

Python's JSON parser accepts NaN and Infinity, integers of any size and lone UTF-16 surrogates
("\\ud800"); each would otherwise fail deep inside SQLite, a protobuf or the response encoder, as a
500. Checked once, for every route, before FastAPI validates the body.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

INT64_MAX = 2**63 - 1

Path = tuple[str | int, ...]


class StrictJSONRoute(APIRoute):
    """An APIRoute whose JSON body must hold only finite numbers, 64-bit integers and valid Unicode."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            if is_json_media_type(request.headers.get("content-type", "")) and await request.body():
                try:
                    # Starlette caches the parsed body, so FastAPI does not parse it a second time.
                    data = await request.json()
                except UnicodeDecodeError as error:
                    # FastAPI would answer a bare 400; it is malformed JSON like any other, so 422.
                    raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "input": None,
                                                   "msg": f"JSON must be UTF-8 text, but byte {error.start} is not"}])
                except (ValueError, RecursionError):
                    data = None  # FastAPI reports the syntax error itself
                problems = list(unstorable_values(data))
                if problems:
                    raise RequestValidationError([{"type": "value_error", "loc": ("body", *path), "msg": message,
                                                   "input": None} for path, message in problems])
            return await handler(request)

        return strict_handler


def unstorable_values(data: Any) -> Iterator[tuple[Path, str]]:
    """Every value in parsed JSON that breaks a rule, with its path (iterative: bodies may nest deep)."""
    stack: list[tuple[Path, Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            yield path, f"must be a finite number, but got {value} (JSON has no NaN or Infinity)"
        elif isinstance(value, int) and not -INT64_MAX <= value <= INT64_MAX:
            yield path, f"integers must fit in 64 bits (|n| <= 2**63 - 1), but got a {value.bit_length()}-bit one"
        elif isinstance(value, str) and not _is_unicode(value):
            yield path, "text must be valid Unicode, but it holds a lone surrogate (like \\ud800)"
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                if not _is_unicode(key):
                    yield path, "keys must be valid Unicode, but one holds a lone surrogate (like \\ud800)"
                    continue
                stack.append(((*path, key), item))
        elif isinstance(value, list):
            stack.extend(((*path, index), item) for index, item in reversed(list(enumerate(value))))


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_json_media_type(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))

