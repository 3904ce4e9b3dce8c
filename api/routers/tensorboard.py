"""A sweep's TensorBoard: started on demand, and reverse-proxied under `/tensorboard/{sweep_id}/`.

TensorBoard itself listens on 127.0.0.1 only, and answers only requests that carry its own secret,
which the proxy adds; the browser reaches it through these routes, so it is behind the app's auth like
every other page of data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import anyio
import httpx
from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from api.auth import AdminDep
from api.deps import RepositoryDep
from api.tensorboard_child import SECRET_HEADER
from api.tensorboards import (
    NoSweepLogsError,
    TensorBoards,
    TensorBoardsBusyError,
    TensorBoardUnavailableError,
    Upstream,
    path_prefix,
)

# Headers about one hop's connection (RFC 9110 section 7.6.1) are never forwarded; neither are the
# caller's credentials, which are the app's business, not TensorBoard's, nor a TensorBoard secret of
# the caller's making (the proxy sends the real one).
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                         "transfer-encoding", "upgrade", "proxy-connection"})
_NOT_FORWARDED = _HOP_BY_HOP | {"host", "content-length", "cookie", "authorization", SECRET_HEADER.lower()}
# Nor, on the way back, the headers this server writes itself: its `server` and `date` would be repeated.
_NOT_RETURNED = _HOP_BY_HOP | {"server", "date"}
_PROXIED_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class TensorBoardPublic(BaseModel):
    url: str
    """Where the sweep's TensorBoard is served, through this server; add `#hparams` for the HParams dashboard."""


def get_tensorboards(request: Request) -> TensorBoards:
    tensorboards: TensorBoards = request.app.state.tensorboards
    return tensorboards


TensorBoardsDep = Annotated[TensorBoards, Depends(get_tensorboards)]

# Admin only, like every page of data (the app's token gate says so too; this declares it here).
router = APIRouter(prefix="/sweeps", tags=["tensorboard"], dependencies=[AdminDep])
proxy_router = APIRouter(prefix="/tensorboard", include_in_schema=False, dependencies=[AdminDep])


@router.post("/{sweep_id}/tensorboard", response_model=TensorBoardPublic,
             responses={404: {"description": "No sweep with this id."},
                        503: {"description": "TensorBoard could not be started, or as many as allowed run and "
                                             "all are in use (`--max-tensorboards`); the message says which."}})
def open_tensorboard(sweep_id: int, repository: RepositoryDep, tensorboards: TensorBoardsDep) -> TensorBoardPublic:
    """Start the sweep's TensorBoard, or reuse the one already running; it stops after a while unused.

    At most `--max-tensorboards` run at once: starting another stops the least recently used one that
    is not in use, or answers 503 when all are.
    """
    repository.get_sweep(sweep_id)  # 404 for a sweep that does not exist
    _ensure(tensorboards.ensure, sweep_id)
    return TensorBoardPublic(url=f"{path_prefix(sweep_id)}/")


@proxy_router.get("/{sweep_id}")
def to_folder(sweep_id: int) -> RedirectResponse:
    # TensorBoard's pages use relative links: they need the trailing slash.
    return RedirectResponse(f"{path_prefix(sweep_id)}/", status_code=status.HTTP_308_PERMANENT_REDIRECT)


@proxy_router.api_route("/{sweep_id}/{path:path}", methods=_PROXIED_METHODS)
async def proxy(sweep_id: int, path: str, request: Request, tensorboards: TensorBoardsDep) -> Response:
    """Forward the request to the sweep's TensorBoard (starting it first if needed) and stream its answer."""
    # Counted as under way until its answer has been sent (or the caller left): not stopped meanwhile.
    target = await run_in_threadpool(_ensure, tensorboards.acquire, sweep_id)
    try:
        # The path as sent (still percent-encoded), which already starts with TensorBoard's own prefix.
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        url = f"{target.base_url}{raw_path.decode('latin-1')}"
        if request.url.query:
            url += f"?{request.url.query}"
        headers = [(name, value) for name, value in request.headers.raw
                   if name.decode("latin-1").lower() not in _NOT_FORWARDED]
        headers += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in target.headers.items()]
        client = tensorboards.http()
        upstream_request = client.build_request(request.method, url, headers=headers, content=await request.body())
        try:
            upstream = await client.send(upstream_request, stream=True)
        except httpx.HTTPError as error:
            raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"TensorBoard for sweep {sweep_id} did not answer: "
                                                             f"{type(error).__name__}: {error}") from None
    except BaseException:
        tensorboards.release(sweep_id)
        raise

    response = _Proxied(upstream, tensorboards, sweep_id)
    # Raw bytes, so Content-Encoding and Content-Length stay true; repeated headers are kept as they are.
    response.raw_headers = [(name, value) for name, value in upstream.headers.raw
                            if name.decode("latin-1").lower() not in _NOT_RETURNED]
    return response


class _Proxied(StreamingResponse):
    """A TensorBoard's answer, streamed; its connection is closed and its request ended however the sending
    ends (a caller who leaves mid-answer included)."""

    def __init__(self, upstream: httpx.Response, tensorboards: TensorBoards, sweep_id: int):
        super().__init__(upstream.aiter_raw(), status_code=upstream.status_code)
        self._upstream = upstream
        self._tensorboards = tensorboards
        self._sweep_id = sweep_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._tensorboards.release(self._sweep_id)  # a long download counts as use until it ends
            with anyio.CancelScope(shield=True):
                await self._upstream.aclose()


def _ensure(start: Callable[[int], Upstream], sweep_id: int) -> Upstream:
    try:
        return start(sweep_id)
    except NoSweepLogsError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    except TensorBoardsBusyError as error:
        # One is in use until a while after its last request: worth asking again later.
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(error), headers={"Retry-After": "30"}) from None
    except TensorBoardUnavailableError as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(error)) from None
