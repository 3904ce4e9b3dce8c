"""A sweep's TensorBoard: started on demand, and reverse-proxied under `/tensorboard/{sweep_id}/`.

TensorBoard itself listens on 127.0.0.1 only; the browser reaches it through these routes, so it is
behind the app's auth like every other page of data.
"""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from api.auth import AdminDep
from api.deps import RepositoryDep
from api.tensorboards import NoSweepLogsError, TensorBoards, TensorBoardUnavailableError, path_prefix

# Headers about one hop's connection (RFC 9110 section 7.6.1) are never forwarded; neither are the
# caller's credentials, which are the app's business, not TensorBoard's.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                         "transfer-encoding", "upgrade", "proxy-connection"})
_NOT_FORWARDED = _HOP_BY_HOP | {"host", "content-length", "cookie", "authorization"}
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
                        503: {"description": "TensorBoard could not be started; the message says why."}})
def open_tensorboard(sweep_id: int, repository: RepositoryDep, tensorboards: TensorBoardsDep) -> TensorBoardPublic:
    """Start the sweep's TensorBoard, or reuse the one already running; it stops after a while unused."""
    repository.get_sweep(sweep_id)  # 404 for a sweep that does not exist
    _ensure(tensorboards, sweep_id)
    return TensorBoardPublic(url=f"{path_prefix(sweep_id)}/")


@proxy_router.get("/{sweep_id}")
def to_folder(sweep_id: int) -> RedirectResponse:
    # TensorBoard's pages use relative links: they need the trailing slash.
    return RedirectResponse(f"{path_prefix(sweep_id)}/", status_code=status.HTTP_308_PERMANENT_REDIRECT)


@proxy_router.api_route("/{sweep_id}/{path:path}", methods=_PROXIED_METHODS)
async def proxy(sweep_id: int, path: str, request: Request, tensorboards: TensorBoardsDep) -> Response:
    """Forward the request to the sweep's TensorBoard (starting it first if needed) and stream its answer."""
    port = await run_in_threadpool(_ensure, tensorboards, sweep_id)
    # The path as sent (still percent-encoded), which already starts with TensorBoard's own prefix.
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    url = f"http://127.0.0.1:{port}{raw_path.decode('latin-1')}"
    if request.url.query:
        url += f"?{request.url.query}"
    headers = [(name, value) for name, value in request.headers.raw
               if name.decode("latin-1").lower() not in _NOT_FORWARDED]
    client = tensorboards.http()
    upstream_request = client.build_request(request.method, url, headers=headers, content=await request.body())
    try:
        upstream = await client.send(upstream_request, stream=True)
    except httpx.HTTPError as error:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"TensorBoard for sweep {sweep_id} did not answer: "
                                                         f"{type(error).__name__}: {error}") from None

    async def finish() -> None:
        await upstream.aclose()
        tensorboards.touch(sweep_id)  # a long download counts as use until it ends

    response = StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code,
                                 background=BackgroundTask(finish))
    # Raw bytes, so Content-Encoding and Content-Length stay true; repeated headers are kept as they are.
    response.raw_headers = [(name, value) for name, value in upstream.headers.raw
                            if name.decode("latin-1").lower() not in _HOP_BY_HOP]
    return response


def _ensure(tensorboards: TensorBoards, sweep_id: int) -> int:
    try:
        return tensorboards.ensure(sweep_id)
    except NoSweepLogsError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    except TensorBoardUnavailableError as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(error)) from None
