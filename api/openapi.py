"""The OpenAPI document at /docs: FastAPI's own, with the errors that apps-wide rules cause documented
on every operation they apply to, so no route has to remember to declare them.

- 401 and 403, from the rules api.auth enforces: the public routes need no token; routes that declare
  WorkerDep take either token (401 without one); every other route takes the admin token only (401
  without one, 403 for the worker token).
- 400 on every operation, and 403 on every one that changes something (POST, PUT, PATCH, DELETE), public
  ones too, from the Host and origin checks of api.origin_guard.
- 413 on every operation with a request body, from api.limits.
- The one error shape (`{"detail": ...}`, api.errors) on every error a route documented by its
  description only.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from api.auth import is_public, require_worker
from api.origin_guard import STATE_CHANGING
from api.schemas import ERRORS, ErrorMessage, ValidationErrorMessage

_ERROR_MODELS = (ErrorMessage, ValidationErrorMessage)


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` add the app-wide errors to FastAPI's document (once; the document is cached)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _document_app_errors(generate(), app)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the document


def _document_app_errors(document: dict[str, Any], app: FastAPI) -> None:
    worker_operations = _worker_operations(app)
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            codes: tuple[int, ...] = (400,)
            if not is_public(method.upper(), path):
                codes += (401,) if (method, path) in worker_operations else (401, 403)
            if method.upper() in STATE_CHANGING and 403 not in codes:
                codes += (403,)
            if "requestBody" in operation:
                codes += (413,)
            responses = operation.setdefault("responses", {})
            for code in codes:
                responses.setdefault(str(code), {"description": ERRORS[code][1]})
            for code, response in responses.items():
                if code[0] in "45" and "content" not in response:
                    model = ValidationErrorMessage if code == "422" else ErrorMessage
                    response["content"] = {"application/json": {"schema": {"$ref": _ref(model)}}}
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in _ERROR_MODELS:
        for name, schema in model.model_json_schema(ref_template=_ref_template()).get("$defs", {}).items():
            schemas.setdefault(name, schema)
        if model.__name__ not in schemas:
            schema = model.model_json_schema(ref_template=_ref_template())
            schema.pop("$defs", None)
            schemas[model.__name__] = schema


def _ref_template() -> str:
    return "#/components/schemas/{model}"


def _ref(model: type) -> str:
    return _ref_template().format(model=model.__name__)


def _worker_operations(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of the routes that declare WorkerDep, include_router dependencies counted."""
    found: set[tuple[str, str]] = set()
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIRoute) and _declares(route.dependant, require_worker):
            found |= {(method.lower(), route.path_format) for method in route.methods or ()}
    return found


def _declares(dependant: Dependant, call: Any) -> bool:
    return any(sub.call is call or _declares(sub, call) for sub in dependant.dependencies)
