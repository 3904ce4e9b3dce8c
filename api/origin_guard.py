"""What a web page of another origin could make a visitor's browser send: checked before the token gate.

Two checks, both on headers only (no body is read):

- The origin check (cross-site request forgery). A request that changes something (POST, PUT, PATCH,
  DELETE, or a websocket) and is not authenticated by an `Authorization: Bearer` header must come from
  the server's own origin: its `Origin` header (its `Referer` when it sends no Origin) must name the
  scheme, host and port the request was sent to. Otherwise 403. SameSite cookies do not stop this: a
  page on another port of the same host, or on a sibling subdomain, is the same site, so the browser
  sends the login cookie with its form posts; and with no token configured, any page may post. A
  request with neither header passes: it is not a browser's (browsers send Origin on every cross-origin
  POST), but curl, the CLI or a worker. With tokens, a bearer header passes too: a browser never adds
  one to a cross-origin request without a CORS preflight, which this server does not answer.
  (The page's own POSTs carry its origin only while its Referrer-Policy keeps it for same-origin
  requests, as `same-origin` does: under `no-referrer` a browser sends `Origin: null`, refused here.)
- The Host check (DNS rebinding). A page can point a DNS name of its own at 127.0.0.1 and then read and
  post as if it were the server's page, its requests naming that name in `Host`. So a server without
  a token answers only to the names it is meant to be reached by: its bind address, `localhost`,
  `127.0.0.1`, `::1` (any port) and the operator's `allowed_hosts`; other Hosts get 400. With tokens,
  such a page holds no cookie and no token and gains nothing, and workers reach the server by any name
  or address of its machine: the check applies only once the operator lists `allowed_hosts`.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit

from fastapi import status
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from api.settings import LOOPBACK_NAMES, Settings, host_name

__all__ = ["OriginGuard", "STATE_CHANGING"]

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}" + ("" if DEFAULT_PORTS.get(self.scheme) == self.port else f":{self.port}")


def parse_origin(url: str) -> Origin | None:
    """The (scheme, host, port) of an Origin or Referer header's URL; None for `null` or anything unparsable."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return Origin(scheme, host_name(parts.hostname), port if port is not None else DEFAULT_PORTS[scheme])


def split_host(host: str) -> tuple[str, int | None] | None:
    """A Host header's name (normalised as settings.host_name does) and port; None when it is malformed."""
    try:
        parts = urlsplit(f"//{host.strip()}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    return host_name(parts.hostname), port


class OriginGuard:
    """ASGI middleware: the origin check and the Host check (see the module's docstring)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.tokens = settings.admin_token is not None
        answered = {*LOOPBACK_NAMES, *settings.allowed_hosts}
        bind = host_name(settings.host)
        if bind not in _WILDCARD_BINDS:
            answered.add(bind)
        self.answered: frozenset[str] | None = (
            frozenset(answered) if not self.tokens or settings.allowed_hosts else None)
        """The host names answered; None: any (tokens, and no allowed_hosts)."""
        self.listed = ", ".join(sorted(f"[{name}]" if ":" in name else name for name in answered))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or (
                self.answered is None and kind == "http" and scope["method"] not in STATE_CHANGING):
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation
        else:
            await refusal(scope, receive, send)

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        host = origin = referer = authorization = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"referer":
                referer = value.decode("latin-1")
            elif name == b"authorization":
                authorization = value.decode("latin-1")
        served = split_host(host) if host is not None else None
        if self.answered is not None and host is not None and (served is None or served[0] not in self.answered):
            return self._bad_host(host, served)
        method = scope.get("method", "GET")
        if scope["type"] == "http" and method not in STATE_CHANGING:
            return None
        if self.tokens and authorization is not None and authorization[:7].lower() == "bearer ":
            return None
        claimed = origin if origin is not None else referer
        if claimed is None:
            return None
        scheme = {"ws": "http", "wss": "https"}.get(scope["scheme"], scope["scheme"])
        own = None if served is None else Origin(scheme, served[0],
                                                 served[1] if served[1] is not None else DEFAULT_PORTS[scheme])
        if own is not None and parse_origin(claimed) == own:
            return None
        return self._cross_origin(method, claimed, origin is None, own)

    def _bad_host(self, host: str, served: tuple[str, int | None] | None) -> JSONResponse:
        name = served[0] if served is not None else host
        detail = (f"host {host!r} is not a name this server answers to ({self.listed}, on any port): a request "
                  f"for another name may come from a web page that pointed a DNS name of its own at this "
                  f"machine (DNS rebinding). To reach the server as {name!r}, start it with "
                  f"--allowed-host {name} (or SWEEPER_ALLOWED_HOSTS={name})")
        return JSONResponse({"detail": detail}, status_code=status.HTTP_400_BAD_REQUEST)

    def _cross_origin(self, method: str, claimed: str, from_referer: bool, own: Origin | None) -> JSONResponse:
        source = parse_origin(claimed)
        shown = repr(str(source) if source is not None and from_referer else claimed[:200])
        header = "named by its Referer, as it sent no Origin" if from_referer else "its Origin"
        ours = f"this server's own origin ({own})" if own is not None else "this server's own origin"
        how = ("programs send the token as `Authorization: Bearer <token>` instead (the CLI and workers do)"
               if self.tokens else "programs send no Origin header and are not affected (the CLI, workers, curl)")
        detail = (f"cross-origin request refused: a {method} from {shown} ({header}), which is not {ours}. "
                  f"A request that changes something must come from the server's own web page; {how}")
        return JSONResponse({"detail": detail}, status_code=status.HTTP_403_FORBIDDEN)
