"""Security headers on every answer of the app: what a browser may load and run for it, and who may frame it.

- `Content-Security-Policy`: the page loads scripts, styles and everything else from the server itself
  only; no inline script runs but the two the page's shell holds, named by their hashes (api.routers.web);
  no plugin, no `<base>`, and `frame-ancestors 'none'`: no other page may frame it (clickjacking).
- `X-Content-Type-Options: nosniff`: a browser takes each answer as the type it is sent with, so a
  JSON answer or a text file can never run as a script or a stylesheet.
- `Referrer-Policy: same-origin`: a link out of the page (a dataset's home, TensorBoard's links) tells
  the other site nothing of the page's addresses.

Every answer gets them, the API's and the errors' included, unless it sets its own (the page does, with
its scripts' hashes). Two exceptions:

- TensorBoard's pages under `/tensorboard/` are TensorBoard's own and need inline scripts: they keep the
  headers TensorBoard sends, and get `nosniff` and a policy of `frame-ancestors 'self'` on top (TensorBoard
  frames some of its own plugins; no other site may frame it).
- FastAPI's API docs (`/docs`, `/redoc`) load Swagger UI and ReDoc from their CDN and start them with an
  inline script; their policy allows exactly that, and still no framing.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DEFAULT_HEADERS", "DOCS_POLICY", "SecurityHeaders", "TENSORBOARD_PREFIX", "content_security_policy"]

TENSORBOARD_PREFIX = "/tensorboard/"

_POLICY: dict[str, str] = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    # The page's icon is an empty data: URL (no request for /favicon.ico).
    "img-src": "'self' data:",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}


def content_security_policy(*, script_hashes: Iterable[str] = ()) -> str:
    """The server's policy; `script_hashes` ('sha256-...', quoted) name the inline scripts a page may run."""
    policy = dict(_POLICY)
    policy["script-src"] = " ".join([policy["script-src"], *script_hashes])
    return "; ".join(f"{directive} {sources}" for directive, sources in policy.items())


_CDN = "https://cdn.jsdelivr.net"
DOCS_POLICY = "; ".join([
    "default-src 'self'",
    f"script-src 'self' 'unsafe-inline' {_CDN}",
    f"style-src 'self' 'unsafe-inline' {_CDN} https://fonts.googleapis.com",
    "font-src 'self' https://fonts.gstatic.com",
    "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly",
    "worker-src 'self' blob:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
"""FastAPI's docs pages: Swagger UI and ReDoc from their CDN, each started by an inline script."""

_CSP = b"content-security-policy"
_Headers = tuple[tuple[bytes, bytes], ...]


def _headers(policy: str) -> _Headers:
    return ((_CSP, policy.encode("ascii")), (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"))


DEFAULT_HEADERS: dict[str, str] = {name.decode("ascii"): value.decode("ascii")
                                   for name, value in _headers(content_security_policy())}
"""The headers an answer gets; for one sent from outside the middleware (a 500 after a bug)."""


class SecurityHeaders:
    """ASGI middleware: adds the security headers to every HTTP answer that does not set them itself."""

    def __init__(self, app: ASGIApp, docs_paths: Iterable[str | None] = ()) -> None:
        self.app = app
        self.defaults = _headers(content_security_policy())
        self.docs = _headers(DOCS_POLICY)
        self.docs_paths = frozenset(path for path in docs_paths if path)
        # Appended whatever TensorBoard sent: a second policy only narrows what the first allows.
        self.tensorboard_policy = (_CSP, b"frame-ancestors 'self'")
        self.nosniff = (b"x-content-type-options", b"nosniff")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        tensorboard = path.startswith(TENSORBOARD_PREFIX)
        defaults = self.docs if path in self.docs_paths else self.defaults

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                if tensorboard:
                    headers.append(self.tensorboard_policy)
                    if self.nosniff[0] not in present:
                        headers.append(self.nosniff)
                else:
                    headers.extend(header for header in defaults if header[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
