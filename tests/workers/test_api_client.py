"""The HTTP client against a real server (and, for retry rules, a scripted transport)."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sweeper import SweeperError
from sweeper.client import (ApiError, Client, ConflictError, LeaseLostError, NotFoundError, ServerUnavailableError,
                            SweepStateError)
from sweeper.messages import (Action, Assignment, ClaimRequest, CompleteReport, FailReport, FailureKind,
                              HeartbeatRequest, MetricsReport, ReleaseReport)
from workers_testing import digits_spec, free_port


def claim(client: Client, worker_id: str = "w1") -> Assignment:
    assignment = client.claim(ClaimRequest(worker_id=worker_id, host="test-host"))
    assert assignment is not None
    return assignment


def test_health(client: Client) -> None:
    assert client.health() == {"status": "ok"}


def test_an_invalid_spec_raises_a_message_naming_the_field(client: Client) -> None:
    spec = digits_spec(hparams={"dropout": {"type": "real_interval", "min": 0.5, "max": 0.1}})

    with pytest.raises(ApiError) as caught:
        client.create_sweep(spec)

    assert caught.value.status_code == 422
    assert str(caught.value) == "hparams.dropout: min (0.5) must be < max (0.1)"
    assert isinstance(caught.value, SweeperError)


def test_several_problems_are_joined_one_per_field(client: Client) -> None:
    spec = digits_spec(model="no-such-model", train={"epochs": 0})

    with pytest.raises(ApiError) as caught:
        client.create_sweep(spec)

    assert len(caught.value.messages) == 2
    assert any(m.startswith("model: unknown model 'no-such-model'") for m in caught.value.messages)
    assert any(m.startswith("train.epochs: ") for m in caught.value.messages)
    assert str(caught.value) == "; ".join(caught.value.messages)


def test_an_unknown_id_raises_not_found(client: Client) -> None:
    with pytest.raises(NotFoundError) as caught:
        client.get_sweep(424242)
    assert caught.value.status_code == 404
    assert "424242" in str(caught.value)
    with pytest.raises(NotFoundError):
        client.get_trial(424242)


def test_a_call_without_the_lease_raises_lease_lost(client: Client) -> None:
    client.create_sweep(digits_spec())
    assignment = claim(client, "w1")
    token = assignment.lease_token

    with pytest.raises(LeaseLostError) as caught:
        client.heartbeat(assignment.trial_id, HeartbeatRequest(worker_id="someone-else", lease_token=token))
    assert caught.value.status_code == 409
    with pytest.raises(LeaseLostError):
        client.complete(assignment.trial_id, CompleteReport(worker_id="someone-else", lease_token=token,
                                                            metrics={"val_accuracy": 1.0}))


def test_a_call_with_the_token_of_an_earlier_claim_raises_lease_lost_naming_both_tokens(client: Client) -> None:
    client.create_sweep(digits_spec())
    first = claim(client, "w1")
    again = claim(client, "w1")  # the same worker id claims again (it restarted): a new token fences the first
    assert again.trial_id == first.trial_id and again.lease_token > first.lease_token

    with pytest.raises(LeaseLostError) as caught:
        client.heartbeat(first.trial_id, HeartbeatRequest(worker_id="w1", lease_token=first.lease_token))

    assert str(first.lease_token) in str(caught.value) and str(again.lease_token) in str(caught.value)
    assert client.heartbeat(again.trial_id, HeartbeatRequest(worker_id="w1", lease_token=again.lease_token)).action \
        is Action.continue_


def test_a_complete_sent_again_with_its_token_answers_the_stored_trial(client: Client) -> None:
    # What a client's retry after a lost answer looks like to the server: no 409, no second result.
    client.create_sweep(digits_spec(trials=1))
    assignment = claim(client)
    report = CompleteReport(worker_id="w1", lease_token=assignment.lease_token, metrics={"val_accuracy": 0.75})

    first = client.complete(assignment.trial_id, report)
    again = client.complete(assignment.trial_id, report.model_copy(update={"metrics": {"val_accuracy": 0.5}}))

    assert first["state"] == again["state"] == "completed"
    assert again["metrics"] == {"val_accuracy": 0.75}


def test_claim_answers_none_when_there_is_no_work(client: Client) -> None:
    assert client.claim(ClaimRequest(worker_id="w1", host="test-host")) is None


def test_the_worker_protocol_round_trip_drops_non_finite_metrics(client: Client) -> None:
    sweep = client.create_sweep(digits_spec(trials=1))
    assignment = claim(client)
    assert assignment.sweep_id == sweep["id"] and assignment.model == "mlp"

    token = assignment.lease_token
    assert client.heartbeat(assignment.trial_id, HeartbeatRequest(worker_id="w1", lease_token=token)).action \
        is Action.continue_
    report = MetricsReport(worker_id="w1", lease_token=token, epoch=0,
                           metrics={"val_accuracy": 0.5, "loss": math.nan, "val_loss": math.inf})
    assert client.report_metrics(assignment.trial_id, report).action is Action.continue_
    done = client.complete(assignment.trial_id, CompleteReport(worker_id="w1", lease_token=token,
                                                               metrics={"val_accuracy": 0.75, "loss": -math.inf}))

    assert done["state"] == "completed"
    trial = client.get_trial(assignment.trial_id)
    assert [{key: entry[key] for key in ("epoch", "metrics")} for entry in trial["history"]] == [{"epoch": 0, "metrics": {"val_accuracy": 0.5}}]
    assert trial["metrics"] == {"val_accuracy": 0.75}
    assert client.list_trials(sweep["id"])["count"] == 1
    assert client.list_sweeps()["count"] == 1


def test_fail_records_the_error(client: Client) -> None:
    client.create_sweep(digits_spec(trials=1))
    assignment = claim(client)

    failed = client.fail(assignment.trial_id, FailReport(worker_id="w1", lease_token=assignment.lease_token,
                                                         error="Traceback: boom"))

    assert failed["state"] == "failed" and failed["error"] == "Traceback: boom"


def test_a_complete_whose_answer_was_lost_is_retried_and_answered_with_the_stored_trial(server: Any) -> None:
    lost: list[str] = []

    class LosesTheFirstCompleteAnswer(httpx.HTTPTransport):
        """Delivers every request; the first complete's answer never comes back, as on a dropped connection."""

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            if request.url.path.endswith("/complete") and not lost:
                response.close()
                lost.append(request.url.path)
                raise httpx.ReadTimeout("the answer was lost", request=request)
            return response

    with Client(server.url, retries=2, backoff=0.0, transport=LosesTheFirstCompleteAnswer()) as client:
        client.create_sweep(digits_spec(trials=1))
        assignment = claim(client)
        report = CompleteReport(worker_id="w1", lease_token=assignment.lease_token, metrics={"val_accuracy": 0.75})

        done = client.complete(assignment.trial_id, report)  # recorded on the first try; answered on the second

    assert lost and (done["state"], done["metrics"]) == ("completed", {"val_accuracy": 0.75})


def test_connection_refused_is_retried_a_bounded_number_of_times(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, retries=2, backoff=0.01) as client, caplog.at_level(logging.WARNING, logger="sweeper.client"):
        with pytest.raises(ServerUnavailableError) as caught:
            client.claim(ClaimRequest(worker_id="w1", host="test-host"))

    message = str(caught.value)
    assert message.startswith(f"sweeper server at {url} is unreachable: POST /api/v1/trials/claim failed after 3")
    assert caught.value.status_code is None
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 2


def test_a_worker_call_survives_a_short_server_outage(start_server: Callable[..., Any]) -> None:
    port = free_port()
    # The server comes up a second after the first attempt fails; the client keeps trying meanwhile.
    starter = threading.Timer(1.0, start_server, kwargs={"port": port})
    starter.start()
    try:
        with Client(f"http://127.0.0.1:{port}", retries=8, backoff=0.2, max_backoff=1.0) as client:
            started = time.monotonic()
            assert client.claim(ClaimRequest(worker_id="w1", host="test-host")) is None
            assert time.monotonic() - started >= 0.9
    finally:
        starter.join()


def scripted(answers: list[int | Exception]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport that answers each request with the next status code (or raises the next error)."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        body = {"detail": "database is busy"} if answer >= 400 else {"action": "continue"}
        return httpx.Response(answer, json=body)

    return httpx.MockTransport(handle), seen


BEAT = HeartbeatRequest(worker_id="w1", lease_token=1)


def test_server_errors_on_worker_calls_are_retried_until_an_answer() -> None:
    transport, seen = scripted([503, httpx.ConnectError("refused"), 502, 200])
    with Client("http://sweeper", retries=5, backoff=0.0, transport=transport) as client:
        assert client.heartbeat(1, BEAT).action is Action.continue_
    assert len(seen) == 4
    assert {request.content for request in seen} == {b'{"worker_id":"w1","lease_token":1}'}


def test_server_errors_that_persist_end_in_server_unavailable() -> None:
    transport, seen = scripted([500, 500, 500])
    with Client("http://sweeper", retries=2, backoff=0.0, transport=transport) as client:
        with pytest.raises(ServerUnavailableError, match="failed after 3 attempt.*database is busy") as caught:
            client.heartbeat(1, BEAT)
    assert caught.value.status_code == 500
    assert len(seen) == 3


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_client_errors_are_never_retried(status: int) -> None:
    transport, seen = scripted([status, 200])
    with Client("http://sweeper", retries=5, backoff=0.0, transport=transport) as client:
        with pytest.raises(ApiError) as caught:
            client.heartbeat(1, BEAT)
    assert caught.value.status_code == status
    assert len(seen) == 1


def test_creating_a_sweep_is_not_retried_once_the_server_got_it() -> None:
    # A retry after a 5xx could create the sweep twice; a refused connection never reached the server.
    transport, seen = scripted([httpx.ConnectError("refused"), 500, 201])
    with Client("http://sweeper", retries=5, backoff=0.0, transport=transport) as client:
        with pytest.raises(ServerUnavailableError):
            client.create_sweep({"name": "x"})
    assert len(seen) == 2


@pytest.mark.parametrize("url", ["localhost:8000", "http://localhost:8000/", "http://localhost:8000/api/v1/"])
def test_the_server_url_may_be_given_loosely(url: str) -> None:
    with Client(url) as client:
        assert client.base_url == "http://localhost:8000"


def test_release_gives_the_trial_back_without_using_an_attempt(client: Client) -> None:
    client.create_sweep(digits_spec(trials=1))
    assignment = claim(client, "leaving")
    token = assignment.lease_token
    client.report_metrics(assignment.trial_id, MetricsReport(worker_id="leaving", lease_token=token, epoch=0,
                                                             metrics={"loss": 1.0}))

    released = client.release(assignment.trial_id, ReleaseReport(worker_id="leaving", lease_token=token,
                                                                 reason="SIGTERM", epochs_done=1))

    assert released["state"] == "pending" and released["attempts"] == 0
    again = claim(client, "next")
    assert again.trial_id == assignment.trial_id and again.attempt == 1
    assert [{key: entry[key] for key in ("epoch", "metrics")} for entry in client.get_trial(assignment.trial_id)["history"]] == [{"epoch": 0, "metrics": {"loss": 1.0}}]
    with pytest.raises(LeaseLostError):
        client.release(assignment.trial_id, ReleaseReport(worker_id="leaving", lease_token=token, reason="again"))


def test_fail_sends_the_kind_and_traceback(client: Client) -> None:
    client.create_sweep(digits_spec(trials=1))
    assignment = claim(client)

    failed = client.fail(assignment.trial_id, FailReport(worker_id="w1", lease_token=assignment.lease_token,
                                                         error="loss became NaN at epoch 3", kind=FailureKind.nan,
                                                         traceback="Traceback: ..."))

    assert (failed["state"], failed["failure_kind"], failed["traceback"]) == ("failed", "nan", "Traceback: ...")


def test_an_assignment_says_the_attempt_checkpoint_folder_and_heartbeat(client: Client) -> None:
    sweep = client.create_sweep(digits_spec(trials=1))
    assignment = claim(client)
    assert assignment.attempt == 1 and assignment.heartbeat_seconds == 10.0
    assert assignment.checkpoint_dir == str(Path(assignment.logdir) / "checkpoint")
    assert assignment.number == 1
    assert Path(assignment.logdir).parts[-2:] == (str(sweep["id"]), "trial-0001")


def test_pause_resume_and_cancel_a_sweep(client: Client) -> None:
    sweep = client.create_sweep(digits_spec(trials=2))
    assignment = claim(client)

    assert client.pause_sweep(sweep["id"])["status"] == "paused"
    assert client.claim(ClaimRequest(worker_id="w2", host="test-host")) is None
    assert client.resume_sweep(sweep["id"])["status"] == "running"
    cancelled = client.cancel_sweep(sweep["id"])

    assert cancelled["status"] == "cancelled" and cancelled["reason"] == "cancelled on request"
    beat = HeartbeatRequest(worker_id="w1", lease_token=assignment.lease_token)
    assert client.heartbeat(assignment.trial_id, beat).action is Action.cancel


def test_an_invalid_sweep_transition_raises_sweep_state_error_naming_the_status(client: Client) -> None:
    sweep = client.create_sweep(digits_spec(trials=1))
    client.cancel_sweep(sweep["id"])

    with pytest.raises(SweepStateError) as caught:
        client.resume_sweep(sweep["id"])

    assert caught.value.status_code == 409 and isinstance(caught.value, ConflictError)
    assert not isinstance(caught.value, LeaseLostError)
    assert str(caught.value) == f"sweep {sweep['id']} is cancelled: only a paused sweep can be resumed"
    with pytest.raises(NotFoundError):
        client.cancel_sweep(424242)


def test_a_sweep_control_request_is_not_retried_once_the_server_got_it() -> None:
    # A retried cancel that had gone through would answer 409 and hide that it worked.
    transport, seen = scripted([httpx.ConnectError("refused"), 500, 200])
    with Client("http://sweeper", retries=5, backoff=0.0, transport=transport) as client:
        with pytest.raises(ServerUnavailableError):
            client.cancel_sweep(1)
    assert len(seen) == 2


def test_list_workers(client: Client) -> None:
    client.create_sweep(digits_spec(trials=1))
    assignment = client.claim(ClaimRequest(worker_id="box-gpu1", host="box", gpu="1"))
    assert assignment is not None
    client.claim(ClaimRequest(worker_id="box-cpu0", host="box"))

    workers = client.list_workers()

    assert workers["count"] == 2
    assert [(w["id"], w["host"], w["gpu"], w["state"], w["trial_id"]) for w in workers["data"]] == [
        ("box-cpu0", "box", None, "idle", None), ("box-gpu1", "box", "1", "busy", assignment.trial_id)]
    assert [w["id"] for w in client.list_workers(limit=1, offset=1)["data"]] == ["box-gpu1"]
