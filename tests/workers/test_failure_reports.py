"""What the agent tells the server about a trial's exception: kind, one-line error, retryable, traceback;
and how a release reaches a server from before releases."""

from __future__ import annotations

import json
import traceback

import httpx
import pytest

from sweeper import RetryableError
from sweeper._errors import NonFiniteLossError
from sweeper.client import ApiError, Client
from sweeper.messages import FailReport, FailureKind, ReleaseReport
from workers.agent import release_or_fail
from workers.failures import clip, failure_kind, failure_report, one_line


class ResourceExhaustedError(Exception):
    """Named like tf.errors.ResourceExhaustedError, which the worker recognizes without importing TensorFlow."""


def raised(error: BaseException) -> tuple[BaseException, str]:
    try:
        raise error
    except BaseException as caught:
        return caught, traceback.format_exc()


@pytest.mark.parametrize(("error", "kind"), [
    (ValueError("bad shape"), FailureKind.error),
    (NonFiniteLossError("loss became NaN at epoch 2 (batch 0)"), FailureKind.nan),
    (ResourceExhaustedError("failed to allocate"), FailureKind.oom),
    (RuntimeError("OOM when allocating tensor with shape[64,1024,1024]"), FailureKind.oom),
    (RuntimeError("CUDA error: out of memory"), FailureKind.oom),
    (MemoryError(), FailureKind.oom),
    (RuntimeError("no room left in the zoom lens"), FailureKind.error),
])
def test_the_kind_of_a_failure(error: Exception, kind: FailureKind) -> None:
    assert failure_kind(error) is kind


def test_out_of_memory_is_found_behind_the_models_own_error() -> None:
    try:
        try:
            raise ResourceExhaustedError("failed to allocate 4 GiB")
        except ResourceExhaustedError as cause:
            raise ValueError("building the backbone failed") from cause
    except ValueError as error:
        assert failure_kind(error) is FailureKind.oom


def test_an_error_is_reported_in_one_line_with_the_whole_traceback() -> None:
    error, trace = raised(KeyError("pixels"))

    report = failure_report("w1", error, trace, {"units": 8})

    assert report == FailReport(worker_id="w1", error="KeyError: 'pixels'", retryable=False, kind="error",
                                traceback=trace)
    assert report.traceback.startswith("Traceback (most recent call last)")


def test_only_a_retryable_error_is_retried() -> None:
    error, trace = raised(RetryableError("the feature store timed out\nafter 30 s"))

    report = failure_report("w1", error, trace, {})

    assert (report.kind, report.retryable, report.error) == ("error", True,
                                                             "RetryableError: the feature store timed out")


def test_out_of_memory_names_the_configuration() -> None:
    error, trace = raised(ResourceExhaustedError("OOM when allocating tensor with shape[512,4096]\nmore"))

    report = failure_report("w1", error, trace, {"units": 4096, "batch_size": 512, "optimizer": "adam"})

    assert (report.kind, report.retryable) == ("oom", False)
    hparams = json.dumps({"batch_size": 512, "optimizer": "adam", "units": 4096})
    assert report.error == (f"out of memory with hparams {hparams} "
                            f"(ResourceExhaustedError: OOM when allocating tensor with shape[512,4096])")


def test_a_nan_loss_is_its_own_kind_and_not_retried() -> None:
    error, trace = raised(NonFiniteLossError("loss became NaN at epoch 3 (batch 7)"))

    report = failure_report("w1", error, trace, {})

    assert (report.kind, report.retryable, report.error) == ("nan", False,
                                                             "loss became NaN at epoch 3 (batch 7)")


def test_a_long_traceback_keeps_its_end_within_the_limit() -> None:
    text = "x" * 1000 + "ValueError: the end"

    clipped = clip(text, 100)

    assert len(clipped) == 100 and clipped.endswith("ValueError: the end") and "cut" in clipped
    assert clip("short", 100) == "short"


def test_one_line_of_an_exception_without_a_message_is_its_type() -> None:
    assert one_line(StopIteration()) == "StopIteration"


def _server(routes: dict[str, tuple[int, dict[str, object]]], seen: list[str]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        status, body = routes.get(request.url.path, (404, {"detail": "Not Found"}))
        return httpx.Response(status, json=body)
    return httpx.MockTransport(handle)


def test_a_release_on_a_server_without_releases_fails_the_trial_as_retryable() -> None:
    seen: list[str] = []
    transport = _server({"/api/v1/trials/3/fail": (200, {"id": 3, "state": "pending"})}, seen)
    with Client("http://old-server", retries=0, transport=transport) as client:
        answer = release_or_fail(client, 3, ReleaseReport(worker_id="w1", reason="worker shut down", epochs_done=2))

    assert answer == {"id": 3, "state": "pending"}
    assert seen == ["/api/v1/trials/3/release", "/api/v1/trials/3/fail"]


def test_a_release_of_a_trial_the_server_does_not_know_is_not_turned_into_a_failure() -> None:
    seen: list[str] = []
    transport = _server({"/api/v1/trials/3/release": (404, {"detail": "trial 3 does not exist"})}, seen)
    with Client("http://server", retries=0, transport=transport) as client, pytest.raises(ApiError, match="trial 3"):
        release_or_fail(client, 3, ReleaseReport(worker_id="w1", reason="worker shut down"))

    assert seen == ["/api/v1/trials/3/release"]
