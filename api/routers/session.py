"""The web page's session: log in with a token, log out, and ask who you are.

Logging in opens a session on the server (api.web_sessions) and gives the browser its random id in the
`sweeper_session` cookie; the token itself is never kept in the browser. The cookie is HttpOnly (the
page's script, or anything injected into it, cannot read it), SameSite=Strict (another site cannot make
the browser send it: no cross-site request forgery) and Secure when the page came over https. The
session lasts `session_hours` (or until the browser closes); logging out ends it on the server too.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from api.auth import COOKIE_NAME, Role, WorkerDep, role_of, unauthenticated
from api.deps import ContextDep
from api.json_guard import StrictJSONRoute
from api.web_sessions import close_session, open_session

router = APIRouter(prefix="/session", tags=["session"], route_class=StrictJSONRoute)

LEGACY_COOKIE = "sweeper_token"
"""Where sweeper's earlier versions kept the token itself: dropped whenever a browser still sends it."""


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"token": "<the admin token>"}]})

    token: Annotated[str, Field(min_length=1, max_length=4096, description="The admin token (or the worker token).")]


class SessionPublic(BaseModel):
    role: Role
    """admin, worker, or open when the server has no token configured."""


@router.post("", status_code=status.HTTP_204_NO_CONTENT,
             responses={401: {"description": "Not a token of this server (which token was meant is not said)."}})
def log_in(login: Login, request: Request, context: ContextDep) -> Response:
    """Check the token and open a session whose random id goes in the `sweeper_session` cookie (the token
    is not kept there); with auth off there is nothing to keep."""
    role = role_of(login.token, context.settings)
    if role is None:
        raise unauthenticated(login.token, request)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    if role is not Role.open:
        previous = request.cookies.get(COOKIE_NAME)
        if previous:
            close_session(context.sessions, previous)  # logging in again replaces the session
        session_id = open_session(context.sessions, role=role.value, token=login.token,
                                  lifetime=timedelta(hours=context.settings.session_hours))
        response.set_cookie(COOKIE_NAME, session_id, path="/", httponly=True, samesite="strict",
                            secure=_over_https(request))
        _drop_legacy_cookie(request, response)
    return response


@router.delete("", status_code=status.HTTP_204_NO_CONTENT)
def log_out(request: Request, context: ContextDep) -> Response:
    """End the session on the server and drop the cookie (needs no valid session, so a stale cookie can
    always be dropped)."""
    session_id = request.cookies.get(COOKIE_NAME)
    if session_id:
        close_session(context.sessions, session_id)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict", secure=_over_https(request))
    _drop_legacy_cookie(request, response)
    return response


@router.get("", response_model=SessionPublic)
def who_am_i(role: Annotated[Role, WorkerDep]) -> SessionPublic:
    """The role of the token (header) or session (cookie) this request carries; 401 without a valid one."""
    return SessionPublic(role=role)


def _over_https(request: Request) -> bool:
    return request.url.scheme == "https"


def _drop_legacy_cookie(request: Request, response: Response) -> None:
    if LEGACY_COOKIE in request.cookies:
        response.delete_cookie(LEGACY_COOKIE, path="/", httponly=True, samesite="strict", secure=_over_https(request))
