"""The HTTP client of the sweeper REST API, used by the CLI and the workers.

Worker calls (claim, heartbeat, metrics, complete, fail, release) and reads survive a short server
restart: connection errors and 5xx answers are retried with bounded exponential backoff. A 4xx answer
is never retried; it becomes an `ApiError` whose message is the server's own `detail`, with field paths.

Every call on a claimed trial carries the claim's `lease_token` in its request model; once a newer
claim holds the trial, the server refuses the call (409), which raises `LeaseLostError`.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Mapping
from typing import Any

import httpx

from sweeper._errors import SweeperError
from sweeper.messages import (Assignment, ClaimRequest, LeaseConflictReason, CompleteReport, Directive, FailReport, HeartbeatRequest,
                              MetricsReport, ReleaseReport)

__all__ = ["ApiError", "AuthError", "Client", "ConflictError", "LeaseLostError", "NotFoundError",
           "ServerUnavailableError", "SweepStateError"]

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"

# Failures after which the request may never have reached the server, or may be answered on a retry.
# UnsupportedProtocol and other configuration mistakes are left out: retrying cannot fix them.
_RETRYABLE_TRANSPORT_ERRORS = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)


class ApiError(SweeperError):
    """The server refused a request; `status_code` is None when no answer came at all."""

    def __init__(self, message: str, status_code: int | None = None, messages: list[str] | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.messages = messages if messages is not None else [message]


class AuthError(ApiError):
    """401 or 403: no token, a wrong one, or the worker token on a call that needs the admin token.

    Never retried: the same token gets the same answer.
    """


class NotFoundError(ApiError):
    """404: the sweep or trial id is unknown to the server."""


class ConflictError(ApiError):
    """409: the request conflicts with the current state on the server; nothing was changed."""


class LeaseLostError(ConflictError):
    """409 on a trial call: its lease token is not the trial's current one (a newer claim took the trial, or the
    lease ended), so the caller must stop acting as the trial's holder. The server changed nothing.

    `reason` says which (a `LeaseConflictReason`), or is None when the server gave none."""

    def __init__(self, message: str, status_code: int | None = None, messages: list[str] | None = None,
                 reason: LeaseConflictReason | None = None):
        super().__init__(message, status_code, messages)
        self.reason = reason


class SweepStateError(ConflictError):
    """409 on a pause, resume or cancel: the sweep's status does not allow it (the message names the status)."""


class ServerUnavailableError(ApiError):
    """The server could not be reached, or kept answering 5xx, through every retry."""


class Client:
    """Typed calls to one sweeper server.

    Thread-safe (httpx's connection pool is lock-guarded): a worker's heartbeat thread shares it.
    """

    def __init__(self, base_url: str, timeout: float | httpx.Timeout = 30.0, retries: int = 8, backoff: float = 0.5,
                 max_backoff: float = 10.0, transport: httpx.BaseTransport | None = None, token: str | None = None):
        """`token`: the server's admin token, or its worker token for the worker calls; None when the
        server has none (sent as `Authorization: Bearer`, never logged or shown in repr). `timeout` is in
        seconds, or an `httpx.Timeout` to give connecting a shorter limit than reading."""
        if retries < 0:
            raise ValueError(f"`retries >= 0` must hold, but got {retries=}")
        if backoff < 0 or max_backoff < 0:
            raise ValueError(f"backoff delays must be >= 0, but got {backoff=}, {max_backoff=}")
        self.base_url = _normalize_base_url(base_url)
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        headers = {"User-Agent": "sweeper-client"}
        if token and token.strip():
            headers["Authorization"] = f"Bearer {token.strip()}"
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport, headers=headers)

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # -- sweeps ------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz", prefix="").json()

    def session(self) -> dict[str, Any]:
        """{"role": "admin" | "worker" | "open"}: what this client's token may do; AuthError when it is not valid."""
        return self._request("GET", "/session").json()

    def create_sweep(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        # Not idempotent: a retry after the server received the request could create the sweep twice,
        # so only failures to connect (the request never left) are retried.
        return self._request("POST", "/sweeps", json=dict(spec), retry="connect").json()

    def list_sweeps(self, limit: int = 100, offset: int = 0, state: str | None = None) -> dict[str, Any]:
        """{"data": [...], "count": n}: a page of sweeps, newest first; `state` keeps one status ("running", ...)."""
        return self._request("GET", "/sweeps", params=_present(limit=limit, offset=offset, state=state)).json()

    def get_sweep(self, sweep_id: int) -> dict[str, Any]:
        return self._request("GET", f"/sweeps/{sweep_id}").json()

    def list_trials(self, sweep_id: int, limit: int | None = None, offset: int | None = None,
                    state: str | None = None, sort: str | None = None, order: str | None = None) -> dict[str, Any]:
        """{"data": [...], "count": n}: a page of the sweep's trials. `sort` is "index" (the default), "objective"
        (best first), "metrics.<name>" or "hparams.<name>"; `order` "asc" or "desc"; `state` keeps one state."""
        params = _present(limit=limit, offset=offset, state=state, sort=sort, order=order)
        return self._request("GET", f"/sweeps/{sweep_id}/trials", params=params or None).json()

    def best_trial(self, sweep_id: int) -> dict[str, Any] | None:
        """The sweep's completed trial with the best objective, or None while none has completed.

        NotFoundError when the sweep does not exist.
        """
        try:
            return self._request("GET", f"/sweeps/{sweep_id}/best").json()
        except NotFoundError:
            self.get_sweep(sweep_id)  # raises NotFoundError itself for an unknown sweep
            return None

    def objective(self, sweep_id: int) -> dict[str, Any]:
        """{"metric", "goal", "points": [{"trial_id", "number", "index", "value"}]}: every completed trial's
        objective."""
        return self._request("GET", f"/sweeps/{sweep_id}/objective").json()

    def get_trial(self, trial_id: int) -> dict[str, Any]:
        return self._request("GET", f"/trials/{trial_id}").json()

    def get_trial_by_number(self, sweep_id: int, number: int) -> dict[str, Any]:
        """The sweep's trial `number` (from 1, as the page and TensorBoard name it), as `get_trial` answers it.
        NotFoundError naming the sweep and the number when it has no such trial (yet)."""
        return self._request("GET", f"/sweeps/{sweep_id}/trials/{number}").json()

    def importance(self, sweep_id: int, evaluator: str | None = None) -> dict[str, Any]:
        """{"metric", "goal", "evaluator", "completed", "judged", "importances": [{"hparam", "importance"}],
        "reason"}: how much each searched hparam matters for the objective, largest first. `evaluator` is
        "fanova" (the server's default), "ped_anova" or "mean_decrease_impurity". With too few completed
        trials, `importances` is empty and `reason` says why."""
        params = _present(evaluator=evaluator)
        return self._request("GET", f"/sweeps/{sweep_id}/importance", params=params or None).json()

    def export_trials(self, sweep_id: int, format: str = "csv", state: str | None = None) -> str:
        """Every trial of the sweep (of one state, if given) as the text of a CSV file (`format="csv"`) or a
        JSON document (`"json"`): one row per trial, `hparams.<name>` and `metrics.<name>` columns."""
        if format not in ("csv", "json"):
            raise ValueError(f"format must be 'csv' or 'json', but got {format!r}")
        params = _present(state=state)
        return self._request("GET", f"/sweeps/{sweep_id}/trials.{format}", params=params or None).text

    # -- sweep control and workers -----------------------------------------------------------------
    # A control request retried after the server carried it out would answer 409 ("sweep 3 is
    # cancelled: ..."), hiding that it worked, so only failures to connect are retried.

    def pause_sweep(self, sweep_id: int) -> dict[str, Any]:
        """Stop handing out the sweep's trials; running ones finish. ApiError (409) unless it is running."""
        return self._request("POST", f"/sweeps/{sweep_id}/pause", retry="connect", conflict=SweepStateError).json()

    def resume_sweep(self, sweep_id: int) -> dict[str, Any]:
        """Hand out a paused sweep's trials again. ApiError (409) unless it is paused."""
        return self._request("POST", f"/sweeps/{sweep_id}/resume", retry="connect", conflict=SweepStateError).json()

    def cancel_sweep(self, sweep_id: int) -> dict[str, Any]:
        """End the sweep; its running trials stop at their next heartbeat. ApiError (409) once it has ended."""
        return self._request("POST", f"/sweeps/{sweep_id}/cancel", retry="connect", conflict=SweepStateError).json()

    def extend_sweep(self, sweep_id: int, max_trials: int) -> dict[str, Any]:
        """Give the sweep `max_trials` trials in all; a completed or failed one runs again. ApiError (409) once
        it was cancelled, (422) when that adds no trial."""
        return self._request("POST", f"/sweeps/{sweep_id}/extend", json={"max_trials": max_trials},
                             retry="connect", conflict=SweepStateError).json()

    def list_workers(self, limit: int | None = None, offset: int | None = None,
                     state: str | None = None) -> dict[str, Any]:
        """Every worker the server has seen: {"data": [...], "count": n}, each with its state and trial;
        `state` keeps the "idle", "busy" or "lost" ones."""
        params = _present(limit=limit, offset=offset, state=state)
        return self._request("GET", "/workers", params=params or None).json()

    # -- worker calls ------------------------------------------------------------------------------
    # All of them are safe to retry. A claim sent again gets the worker's own trial back (under a new
    # lease token, which the answer carries). A heartbeat or epoch report changes nothing twice, and a
    # complete, fail or release sent again with its token is answered with the trial as stored.

    def claim(self, request: ClaimRequest) -> Assignment | None:
        """The next trial for this worker, or None when there is no work right now (204)."""
        response = self._request("POST", "/trials/claim", json=request.model_dump(mode="json"))
        if response.status_code == httpx.codes.NO_CONTENT:
            return None
        return Assignment.model_validate(response.json())

    def heartbeat(self, trial_id: int, request: HeartbeatRequest) -> Directive:
        """Extend the lease; the answer says whether to go on. LeaseLostError once the lease is not this one."""
        body = request.model_dump(mode="json")
        return Directive.model_validate(self._request("POST", f"/trials/{trial_id}/heartbeat", json=body).json())

    def report_metrics(self, trial_id: int, report: MetricsReport) -> Directive:
        body = _with_finite_metrics(report.model_dump(mode="json"), report.metrics)
        return Directive.model_validate(self._request("POST", f"/trials/{trial_id}/metrics", json=body).json())

    def complete(self, trial_id: int, report: CompleteReport) -> dict[str, Any]:
        """Record the final metrics; the answer is the trial (completed, or cancelled when its sweep ended)."""
        body = _with_finite_metrics(report.model_dump(mode="json"), report.metrics)
        return self._request("POST", f"/trials/{trial_id}/complete", json=body).json()

    def fail(self, trial_id: int, report: FailReport) -> dict[str, Any]:
        """Record the failure; the answer is the trial (pending again when it will be retried)."""
        return self._request("POST", f"/trials/{trial_id}/fail", json=report.model_dump(mode="json")).json()

    def release(self, trial_id: int, report: ReleaseReport) -> dict[str, Any]:
        """Give the trial back unfinished: pending again for any worker, no attempt counted."""
        return self._request("POST", f"/trials/{trial_id}/release", json=report.model_dump(mode="json")).json()

    # -- transport ---------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, prefix: str = API_PREFIX, json: Any = None,
                 params: dict[str, Any] | None = None, retry: str = "all",
                 conflict: type[ConflictError] = LeaseLostError) -> httpx.Response:
        """Send with retries; `retry` is "all" (transport errors and 5xx) or "connect" (connect errors only).

        A 409 answer raises `conflict`: what a conflict means depends on the call.
        """
        url = prefix + path
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            answered: ApiError | None = None
            retry_after = 0.0
            try:
                response = self._http.request(method, url, json=json, params=params)
            except httpx.ConnectError as error:
                failure = f"cannot connect: {error}"
            except _RETRYABLE_TRANSPORT_ERRORS as error:
                failure = f"{type(error).__name__}: {error}"
                if retry != "all":
                    raise ServerUnavailableError(f"{method} {self.base_url}{url} failed: {failure}") from error
            except httpx.HTTPError as error:
                raise ApiError(f"{method} {self.base_url}{url} failed: {type(error).__name__}: {error}") from error
            else:
                if response.status_code < 500 or retry != "all":
                    return _checked(response, conflict)
                answered = _error_for(response, conflict)
                retry_after = _retry_after(response)
                failure = f"server answered {response.status_code}: {answered}"
            if attempt == attempts:
                if answered is not None:
                    raise ServerUnavailableError(f"{method} {url} failed after {attempts} attempt(s): {answered}",
                                                 status_code=answered.status_code, messages=answered.messages)
                raise ServerUnavailableError(f"sweeper server at {self.base_url} is unreachable: {method} {url} "
                                             f"failed after {attempts} attempt(s); last error: {failure}")
            delay = max(self._delay(attempt), min(retry_after, self.max_backoff))
            logger.warning("%s %s: %s; retry %d of %d in %.1fs", method, url, failure, attempt, self.retries, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _delay(self, attempt: int) -> float:
        # Jitter spreads the retries of many workers that lost the same server at the same moment.
        ceiling = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return ceiling * random.uniform(0.5, 1.0)


def _present(**params: Any) -> dict[str, Any]:
    """Query parameters that were given (None means "the server's default")."""
    return {name: value for name, value in params.items() if value is not None}


def _retry_after(response: httpx.Response) -> float:
    # Seconds only: the server sends Retry-After with a 503 when its database is busy.
    try:
        return max(0.0, float(response.headers.get("Retry-After", "0")))
    except ValueError:
        return 0.0


def _normalize_base_url(base_url: str) -> str:
    url = base_url.strip().rstrip("/")
    if not url:
        raise ValueError("the server URL must not be empty")
    if "://" not in url:
        url = f"http://{url}"
    # Accept the API root too (what /docs shows), since every path here already carries the prefix.
    if url.endswith(API_PREFIX):
        url = url[: -len(API_PREFIX)]
    return url


def _with_finite_metrics(body: dict[str, Any], metrics: Mapping[str, float]) -> dict[str, Any]:
    # JSON has no NaN or infinity (pydantic would send null, which the server rejects as a float):
    # a diverged metric is dropped rather than failing the report.
    dropped = sorted(name for name, value in metrics.items() if not math.isfinite(value))
    if dropped:
        logger.debug("dropping non-finite metrics %s", ", ".join(dropped))
    return {**body, "metrics": {name: value for name, value in metrics.items() if math.isfinite(value)}}


def _checked(response: httpx.Response, conflict: type[ConflictError] = LeaseLostError) -> httpx.Response:
    if response.is_success:
        return response
    raise _error_for(response, conflict)


def _error_for(response: httpx.Response, conflict: type[ConflictError] = LeaseLostError) -> ApiError:
    messages = _detail_messages(response)
    message = "; ".join(messages)
    if response.status_code in (httpx.codes.UNAUTHORIZED, httpx.codes.FORBIDDEN):
        which = "the admin token" if response.status_code == httpx.codes.FORBIDDEN else "a token of this server"
        message = f"{message} ({response.request.method} {response.request.url}); pass {which} with --token or " \
                  f"set SWEEPER_TOKEN"
        return AuthError(message, status_code=response.status_code, messages=[message])
    kind: type[ApiError] = {404: NotFoundError, 409: conflict}.get(response.status_code, ApiError)
    if response.status_code >= 500:
        kind = ServerUnavailableError
    if issubclass(kind, LeaseLostError):
        return kind(message, status_code=response.status_code, messages=messages, reason=_conflict_reason(response))
    return kind(message, status_code=response.status_code, messages=messages)


def _conflict_reason(response: httpx.Response) -> LeaseConflictReason | None:
    try:
        return LeaseConflictReason(response.json().get("reason"))
    except (ValueError, AttributeError):
        return None


def _detail_messages(response: httpx.Response) -> list[str]:
    """The server's `detail` as readable lines, e.g. 'hparams.dropout: min (0.5) must be < max (0.1)'."""
    fallback = f"{response.request.method} {response.request.url.path}: HTTP {response.status_code} " \
               f"{response.reason_phrase}".rstrip()
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return [fallback]
    if isinstance(detail, str) and detail:
        return [detail]
    if isinstance(detail, list) and detail:
        return [_describe(item) for item in detail]
    if isinstance(detail, dict) and detail:
        return [_describe(detail)]
    return [fallback]


def _describe(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    message = str(item.get("msg", item))
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    loc = [str(part) for part in item.get("loc", [])]
    # FastAPI roots request-validation paths at "body"/"query"/"path"; users never wrote those.
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    return f"{'.'.join(loc)}: {message}" if loc else message
