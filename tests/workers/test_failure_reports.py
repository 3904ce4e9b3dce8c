"""What the agent tells the server about a trial's exception: kind, one-line error, retryable, traceback."""

from __future__ import annotations

import json
import traceback

import pytest

from sweeper import InfrastructureError, NonFiniteLossError, RetryableError
from sweeper.messages import FailReport, FailureKind
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

    report = failure_report("w1", 7, error, trace, {"units": 8})

    assert report == FailReport(worker_id="w1", lease_token=7, error="KeyError: 'pixels'", retryable=False,
                                kind="error", traceback=trace)
    assert report.traceback.startswith("Traceback (most recent call last)")


def test_only_a_retryable_error_is_retried() -> None:
    error, trace = raised(RetryableError("the feature store timed out\nafter 30 s"))

    report = failure_report("w1", 7, error, trace, {})

    assert (report.kind, report.retryable, report.error) == ("error", True,
                                                             "RetryableError: the feature store timed out")


def test_out_of_memory_names_the_configuration() -> None:
    error, trace = raised(ResourceExhaustedError("OOM when allocating tensor with shape[512,4096]\nmore"))

    report = failure_report("w1", 7, error, trace, {"units": 4096, "batch_size": 512, "optimizer": "adam"})

    assert (report.kind, report.retryable) == ("oom", False)
    hparams = json.dumps({"batch_size": 512, "optimizer": "adam", "units": 4096})
    assert report.error == (f"out of memory with hparams {hparams} "
                            f"(ResourceExhaustedError: OOM when allocating tensor with shape[512,4096])")


def test_a_nan_loss_is_its_own_kind_and_not_retried() -> None:
    error, trace = raised(NonFiniteLossError("loss became NaN at epoch 3 (batch 7)"))

    report = failure_report("w1", 7, error, trace, {})

    assert (report.kind, report.retryable, report.error) == ("nan", False,
                                                             "loss became NaN at epoch 3 (batch 7)")


def test_a_long_traceback_keeps_its_end_within_the_limit() -> None:
    text = "x" * 1000 + "ValueError: the end"

    clipped = clip(text, 100)

    assert len(clipped) == 100 and clipped.endswith("ValueError: the end") and "cut" in clipped
    assert clip("short", 100) == "short"


def test_one_line_of_an_exception_without_a_message_is_its_type() -> None:
    assert one_line(StopIteration()) == "StopIteration"


def test_an_infrastructure_error_is_retried_as_an_io_failure_not_a_model_error() -> None:
    error, trace = raised(InfrastructureError("cannot write the checkpoint: No space left on device"))

    report = failure_report("w1", 7, error, trace, {})

    assert (report.kind, report.retryable, report.lease_token) == (FailureKind.io, True, 7)
    assert report.error == "InfrastructureError: cannot write the checkpoint: No space left on device"
    assert failure_kind(error) is FailureKind.io
