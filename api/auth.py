"""Who may call what: the admin token, the worker token, and the gate that checks them on every request.

Two roles. The admin token may do everything (create, control and read sweeps, the web page, metrics,
TensorBoard); the worker token only the worker protocol (claim a trial, report on it). With no token
configured, auth is off: a server on 127.0.0.1 for one person, as `sweeper run` starts it. A token
travels as `Authorization: Bearer <token>`. The web page's login trades it for a session (api.web_sessions):
the `sweeper_session` cookie holds the session's random id, never the token, and grants the role of the
token that opened it until it expires, is logged out, or that token is no longer configured. The header
wins when both come. `resolve_role` is the one place that turns a request's header or cookie into a role.

The rule is enforced in two places, on purpose:

- `TokenGate`, a middleware in front of the whole app, is the default: every request needs the admin
  token, except the public allow-list (`PUBLIC_ROUTES`) and the routes that declare `WorkerDep`, which
  take either token. So a route added later without a dependency, a mounted folder or a proxy is
  admin-only without anyone remembering to protect it.
- `AdminDep` and `WorkerDep` on the routers say each route's role where the route is declared (and put
  the token in the OpenAPI docs); they check it again, so a route keeps its rule outside the gate too.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import busy_database_answer
from api.settings import Settings
from api.web_sessions import find_session, token_fingerprint

__all__ = ["COOKIE_NAME", "PUBLIC_ROUTES", "AdminDep", "Role", "TokenGate", "WorkerDep", "is_public",
           "presented_token", "resolve_role", "role_of", "session_role", "unauthenticated"]

logger = logging.getLogger(__name__)

COOKIE_NAME = "sweeper_session"
"""The cookie the web page's login sets (HttpOnly, SameSite=Strict): a session id, which the page's script
never sees either."""

MISSING_TOKEN = "this server needs a token: send it as `Authorization: Bearer <token>`, or log in on the web page"
INVALID_TOKEN = "invalid token"
"""Deliberately the same whichever token was meant: a guess learns nothing about either."""
ADMIN_ONLY = "this needs the admin token; the worker token may only claim trials and report on them"


class Role(StrEnum):
    admin = "admin"
    worker = "worker"
    open = "open"
    """Auth is off (no token configured): every caller may do everything."""


@dataclass(frozen=True)
class PublicRoute:
    """Requests that need no token: `path` exactly, or every path under it when it ends with '/'."""

    methods: frozenset[str]
    path: str

    def admits(self, method: str, path: str) -> bool:
        if method not in self.methods:
            return False
        return path.startswith(self.path) if self.path.endswith("/") and self.path != "/" else path == self.path


PUBLIC_ROUTES: tuple[PublicRoute, ...] = (
    PublicRoute(frozenset({"GET"}), "/healthz"),
    # The web page's shell and its assets hold no data; the page asks for the token, then calls the API.
    PublicRoute(frozenset({"GET", "HEAD"}), "/"),
    PublicRoute(frozenset({"GET", "HEAD"}), "/static/"),
    # Login, and logout: a browser holding a stale cookie (the tokens were changed) must still be able
    # to drop it.
    PublicRoute(frozenset({"POST", "DELETE"}), "/api/v1/session"),
)
"""Everything else, the OpenAPI docs (/docs, /openapi.json) included, needs a token. The docs show
nothing secret, but a short list is easy to check; an admin logged in on the web page has the cookie,
so /docs opens in the same browser."""


def is_public(method: str, path: str) -> bool:
    return any(route.admits(method, path) for route in PUBLIC_ROUTES)


def role_of(token: str | None, settings: Settings) -> Role | None:
    """The role `token` grants on a server with `settings`; None for a missing or wrong token."""
    if settings.admin_token is None:
        return Role.open
    if not token:
        return None
    presented = token.encode("utf-8", "backslashreplace")
    # Constant-time comparisons, and always both: how long the answer takes says nothing about how
    # much of a guess was right, nor which token it came close to.
    is_admin = _same(presented, settings.admin_token.get_secret_value())
    is_worker = settings.worker_token is not None and _same(presented, settings.worker_token.get_secret_value())
    if is_admin:
        return Role.admin
    return Role.worker if is_worker else None


def _same(presented: bytes, expected: str) -> bool:
    # Looked up on the module at each call (not imported by name), so a test can watch it being used.
    return hmac.compare_digest(presented, expected.encode("utf-8"))


def session_role(session_id: str, settings: Settings, sessions: sessionmaker[Session]) -> Role | None:
    """The role the web session `session_id` grants; None for no such session, an expired or closed one, or
    one whose token is no longer the server's token for its role. Reads the database: call it off the event
    loop (`resolve_role` does)."""
    stored = find_session(sessions, session_id)
    if stored is None or stored.role not in (Role.admin, Role.worker):
        return None
    token = settings.admin_token if stored.role == Role.admin else settings.worker_token
    if token is None:
        return None
    expected = token_fingerprint(token.get_secret_value(), stored.id_hash)
    if not _same(stored.token_fingerprint.encode("ascii", "backslashreplace"), expected):
        return None
    return Role(stored.role)


_RESOLVED_COOKIE = "sweeper.session_role"
"""Where `resolve_role` keeps a request's cookie and its role (in the request's scope state), so the gate and
the route's dependency read the database once between them."""


async def resolve_role(connection: HTTPConnection, bearer: str | None, cookie: str | None) -> Role | None:
    """The role a request's credentials grant, None for none or a wrong one: its bearer token's when it
    sends the header, else its session cookie's. The gate and the dependencies both ask this, so they
    never disagree about a request."""
    context = connection.scope["app"].state.context
    settings: Settings = context.settings
    if bearer is not None or settings.admin_token is None:
        return role_of(bearer, settings)
    if not cookie:
        return None
    state = connection.scope.setdefault("state", {})
    resolved = state.get(_RESOLVED_COOKIE)
    if resolved is not None and resolved[0] == cookie:
        role: Role | None = resolved[1]
        return role
    # A database read: in a thread, as every route's own reads are, never on the event loop.
    role = await run_in_threadpool(session_role, cookie, settings, context.sessions)
    state[_RESOLVED_COOKIE] = (cookie, role)
    return role


def bearer_credentials(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (what FastAPI's HTTPBearer reads), else None."""
    scheme, credentials = get_authorization_scheme_param(authorization)
    if not (authorization and scheme and credentials) or scheme.lower() != "bearer":
        return None
    return credentials


def presented_token(bearer: str | None, cookie: str | None) -> str | None:
    """The credential a request presents: the bearer header's token when it has one, else the cookie's
    session id.

    The header wins: a program that sends its token explicitly means that one, whatever cookie a
    browser-like client kept.
    """
    return bearer if bearer is not None else cookie


# -- the gate --------------------------------------------------------------------------------------

class TokenGate:
    """ASGI middleware: default-deny for every request that reaches the app.

    Public routes pass. Otherwise a request without a valid token gets 401; one with the worker token
    gets 403 unless the route it reaches declares `WorkerDep`. With auth off, everything passes.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.settings.admin_token is None:
            await self.app(scope, receive, send)
            return
        denial = await self._denial(scope)
        if denial is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation
        else:
            await denial(scope, receive, send)

    async def _denial(self, scope: Scope) -> JSONResponse | None:
        # A websocket has no method: no public route takes one.
        method = scope.get("method", "WEBSOCKET")
        if is_public(method, scope["path"]):
            return None
        connection = HTTPConnection(scope)
        bearer = bearer_credentials(connection.headers.get("authorization"))
        cookie = connection.cookies.get(COOKIE_NAME)
        try:
            role = await resolve_role(connection, bearer, cookie)
        except OperationalError as error:
            # A cookie's session is read from the database here, before any route and its error handlers.
            busy = busy_database_answer(error, method, scope["path"])
            if busy is None:
                raise
            return busy
        if role is None:
            return _unauthenticated_response(presented_token(bearer, cookie), connection)
        if role is Role.worker and not _reaches_worker_route(scope):
            return JSONResponse({"detail": ADMIN_ONLY}, status_code=status.HTTP_403_FORBIDDEN)
        return None


def _reaches_worker_route(scope: Scope) -> bool:
    """Whether the route this request will be routed to (the router's first full match) declares WorkerDep."""
    # iter_route_contexts: included routers are a tree since FastAPI 0.137; this flattens it in routing
    # order, each route with its effective path and dependencies (the include_router ones too).
    for route in iter_route_contexts(scope["app"].routes):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            dependant = getattr(route, "dependant", None) if isinstance(route.original_route, APIRoute) else None
            return dependant is not None and _declares(dependant, require_worker)
    return False


def _declares(dependant: Dependant, call: Any) -> bool:
    return any(sub.call is call or _declares(sub, call) for sub in dependant.dependencies)


def _unauthenticated_response(token: str | None, connection: HTTPConnection) -> JSONResponse:
    error = unauthenticated(token, connection)
    return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)


def unauthenticated(token: str | None, connection: HTTPConnection) -> HTTPException:
    if token:
        # Worth an operator's attention: someone is trying tokens (or a worker has an old one).
        client = connection.client.host if connection.client else "unknown"
        logger.warning("%s %s from %s: invalid token", connection.scope.get("method", ""), connection.url.path,
                       client)
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=INVALID_TOKEN if token else MISSING_TOKEN,
                         headers={"WWW-Authenticate": "Bearer"})


# -- dependencies ----------------------------------------------------------------------------------
# `async def` although they never wait: FastAPI runs a plain `def` dependency in its thread pool, a
# hand-off that costs more than the check itself on every request of the worker protocol.

_bearer = HTTPBearer(auto_error=False, scheme_name="token",
                     description="The admin token; the worker token for the worker protocol.")
_cookie = APIKeyCookie(name=COOKIE_NAME, auto_error=False, scheme_name="cookie",
                       description="A session id, set by POST /api/v1/session (the web page's login).")


async def caller_role(request: Request,
                bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                cookie: Annotated[str | None, Depends(_cookie)]) -> Role:
    """The caller's role; 401 without a valid token or session."""
    token = bearer.credentials if bearer is not None else None
    role = await resolve_role(request, token, cookie)
    if role is None:
        raise unauthenticated(presented_token(token, cookie), request)
    return role


async def require_worker(role: Annotated[Role, Depends(caller_role)]) -> Role:
    """Either token: the worker protocol."""
    return role


async def require_admin(role: Annotated[Role, Depends(caller_role)]) -> Role:
    """The admin token only; the worker token gets 403."""
    if role is Role.worker:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=ADMIN_ONLY)
    return role


AdminDep = Depends(require_admin)
"""For `dependencies=[AdminDep]`, or `role: Annotated[Role, AdminDep]` to read the caller's role."""
WorkerDep = Depends(require_worker)
"""Either token; marks a route as part of the worker protocol (the gate lets the worker token through)."""
