"""A posted sweep spec as plain data: a JSON body as FastAPI parsed it, or a YAML body read like a spec file.

YAML is parsed by the core's `read_spec_text`, so a syntax error answers 422 naming the line, exactly
as `sweeper check` reports it for a file. What YAML can say but JSON cannot (dates, sets, binary, NaN,
aliases repeating a value a billion times) is refused with its path before the spec is validated.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, status
from fastapi.exceptions import RequestValidationError

from sweeper import read_spec_text

from api.json_guard import unstorable_values

YAML_MEDIA_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
MAX_YAML_VALUES = 1_000_000
"""The most values a YAML body may expand to. Without aliases a body within the size limit holds fewer;
with them, a few hundred bytes could otherwise expand to billions."""

_PLAIN_VALUES = (str, int, float, bool, type(None))


def spec_document(body: Any, content_type: str | None) -> Any:
    """The spec the request carries, not yet validated: `body` as FastAPI read it, by `content_type`.

    FastAPI parses JSON itself and hands over the raw bytes of any other media type, or of a body sent
    without a Content-Type.
    """
    media_type = _media_type(content_type)
    if media_type in YAML_MEDIA_TYPES:
        return _yaml_document(body)
    if isinstance(body, (bytes, bytearray)):
        sent = media_type or "a body without a Content-Type"
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            f"a sweep spec is sent as application/json or application/yaml, not {sent}")
    return body


def is_yaml(content_type: str | None) -> bool:
    """Whether a body of this Content-Type is read as YAML."""
    return _media_type(content_type) in YAML_MEDIA_TYPES


def _media_type(content_type: str | None) -> str:
    return (content_type or "").partition(";")[0].strip().lower()


def _yaml_document(body: Any) -> Any:
    if not isinstance(body, (bytes, bytearray)):
        return body  # FastAPI found no body at all, and says so itself
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as error:
        raise _invalid((), f"a YAML body must be UTF-8 text, but byte {error.start} is not") from None
    data = read_spec_text(text, syntax="yaml")
    _check_plain(data)
    problems = list(unstorable_values(data))
    if problems:
        raise RequestValidationError([_problem(path, message) for path, message in problems])
    return data


def _check_plain(data: Any) -> None:
    """Refuse what JSON cannot hold, and documents that aliases blow up, before anything walks them again."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), data)]
    seen = 0
    while stack:
        path, value = stack.pop()
        seen += 1
        if seen > MAX_YAML_VALUES:
            raise _invalid((), f"the document holds more than {MAX_YAML_VALUES} values (YAML aliases repeat "
                               f"theirs); a sweep spec is far smaller")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, _PLAIN_VALUES):
                    raise _invalid(path, f"keys must be strings or numbers, but YAML read a {type(key).__name__}; "
                                         f"quote the key")
                stack.append(((*path, _path_key(key)), item))
        elif isinstance(value, list):
            stack.extend(((*path, index), item) for index, item in enumerate(value))
        elif not isinstance(value, _PLAIN_VALUES):
            raise _invalid(path, f"must be a string, number, bool, list or mapping, but YAML read a "
                                 f"{type(value).__name__}; quote it to keep it text")


def _path_key(key: Any) -> str | int:
    # A loc holds strings and integers only; YAML keys may be bools, floats or null too.
    return key if isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool)) else str(key)


def _problem(path: tuple[Any, ...], message: str) -> dict[str, Any]:
    return {"type": "value_error", "loc": ("body", *path), "msg": message, "input": None}


def _invalid(path: tuple[Any, ...], message: str) -> RequestValidationError:
    return RequestValidationError([_problem(path, message)])
