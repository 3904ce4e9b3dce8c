"""The web page's session: log in with a token (kept in an HttpOnly cookie), log out, and ask who you are.

The cookie is HttpOnly (the page's script, or anything injected into it, cannot read the token),
SameSite=Strict (another site cannot make the browser send it: no cross-site request forgery) and
Secure when the page came over https. It lasts until the browser closes.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from api.auth import COOKIE_NAME, Role, WorkerDep, role_of, unauthenticated
from api.deps import ContextDep
from api.json_guard import StrictJSONRoute

router = APIRouter(prefix="/session", tags=["session"], route_class=StrictJSONRoute)


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"token": "<the admin token>"}]})

    token: Annotated[str, Field(min_length=1, max_length=4096, description="The admin token (or the worker token).")]


class SessionPublic(BaseModel):
    role: Role
    """admin, worker, or open when the server has no token configured."""


@router.post("", status_code=status.HTTP_204_NO_CONTENT,
             responses={401: {"description": "Not a token of this server (which token was meant is not said)."}})
def log_in(login: Login, request: Request, context: ContextDep) -> Response:
    """Check the token and keep it in the `sweeper_token` cookie; with auth off there is nothing to keep."""
    role = role_of(login.token, context.settings)
    if role is None:
        raise unauthenticated(login.token, request)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    if role is not Role.open:
        response.set_cookie(COOKIE_NAME, login.token, path="/", httponly=True, samesite="strict",
                            secure=_over_https(request))
    return response


@router.delete("", status_code=status.HTTP_204_NO_CONTENT)
def log_out(request: Request) -> Response:
    """Drop the cookie (needs no valid token, so a stale cookie can always be dropped)."""
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict", secure=_over_https(request))
    return response


@router.get("", response_model=SessionPublic)
def who_am_i(role: Annotated[Role, WorkerDep]) -> SessionPublic:
    """The role of the token this request carries (header or cookie); 401 without a valid one."""
    return SessionPublic(role=role)


def _over_https(request: Request) -> bool:
    return request.url.scheme == "https"
