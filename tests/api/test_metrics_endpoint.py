"""GET /metrics: Prometheus's text format, with trials, sweeps and workers counted in the database at scrape
time, claims counted by result and timed, and each app's metrics its own."""

from __future__ import annotations

import time
from collections.abc import Callable

from api_testing import API, Worker, control, create_sweep, grid_spec
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sweeper.messages import SweepStatus, TrialState


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, by name and labels, parsed with prometheus-client's own parser."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def by_label(samples: dict, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for (sample, labels), value in samples.items() if sample == name}


def test_trials_sweeps_and_workers_are_counted_with_every_state_present(client: TestClient):
    create_sweep(client, grid_spec(values=4))
    paused = create_sweep(client, grid_spec(name="paused"))
    control(client, paused["id"], "pause")
    done = Worker(client, "w1").claim_id()
    Worker(client, "w1").complete(done, val_accuracy=0.5)
    failed = Worker(client, "w2").claim_id()
    Worker(client, "w2").fail(failed, error="boom")
    Worker(client, "w3").claim_id()

    samples = scrape(client)

    assert by_label(samples, "sweeper_trials", "state") == {
        **{state.value: 0 for state in TrialState}, "completed": 1, "failed": 1, "running": 1}
    assert by_label(samples, "sweeper_sweeps", "status") == {
        **{status.value: 0 for status in SweepStatus}, "running": 1, "paused": 1}
    assert by_label(samples, "sweeper_workers", "state") == {"idle": 2, "busy": 1, "lost": 0}


def test_claims_are_counted_by_result_and_timed(client: TestClient):
    assert by_label(scrape(client), "sweeper_claims_total", "result") == {"assigned": 0, "empty": 0}
    create_sweep(client, grid_spec(values=2))
    for worker in ("w1", "w2", "w3"):
        Worker(client, worker).claim()

    samples = scrape(client)

    assert by_label(samples, "sweeper_claims_total", "result") == {"assigned": 2, "empty": 1}
    assert samples[("sweeper_claim_latency_seconds_count", ())] == 3
    assert 0 < samples[("sweeper_claim_latency_seconds_sum", ())] < 10
    assert samples[("sweeper_claim_latency_seconds_bucket", (("le", "+Inf"),))] == 3


def test_a_silent_worker_is_counted_lost(client_with: Callable[..., TestClient]):
    client = client_with(lease_seconds=0.3, reap_interval_seconds=3600)
    create_sweep(client, grid_spec(values=1))
    Worker(client, "w1").claim_id()
    time.sleep(0.4)

    assert by_label(scrape(client), "sweeper_workers", "state") == {"idle": 0, "busy": 0, "lost": 1}


def test_each_app_has_metrics_of_its_own(client: TestClient, client_with: Callable[..., TestClient],
                                        other_database_url: str):
    other = client_with(database_url=other_database_url)
    create_sweep(client, grid_spec())
    Worker(client, "w1").claim()

    assert by_label(scrape(client), "sweeper_claims_total", "result")["assigned"] == 1
    assert by_label(scrape(other), "sweeper_claims_total", "result")["assigned"] == 0
    assert by_label(scrape(other), "sweeper_sweeps", "status")["running"] == 0


def test_metrics_sit_outside_the_versioned_api(client: TestClient):
    assert client.get(f"{API}/metrics").status_code == 404
