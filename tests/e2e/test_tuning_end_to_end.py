"""A tuning sweep with real processes: TPE proposes, ASHA prunes, real workers train the digits MLP, and a
kill -9 of the server mid-sweep changes nothing that was decided.

`sweeper serve` and `sweeper worker` run as subprocesses on a temporary SQLite file; everything is observed
through the REST API, as an operator would, through TensorBoard's own reader of the logs, and on the web
page in Chromium.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
from e2e_processes import wait_until
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util
from test_faults_end_to_end import Service

pytestmark = pytest.mark.e2e

EPOCHS = 9
TRIALS = 8

TUNING_SPEC = {
    "name": "tuning", "model": "mlp", "dataset": "digits",
    "objective": {"metric": "val_accuracy", "goal": "maximize"},
    "hparams": {"learning_rate": {"type": "real_interval", "min": 1e-5, "max": 0.3, "log": True},
                "units": {"type": "discrete", "values": [8, 32, 128]}, "batch_size": 128},
    "search": {"strategy": "tpe", "max_trials": TRIALS, "seed": 1},
    "stopping": {"rule": "asha", "min_epochs": 1, "reduction_factor": 3},
    "train": {"epochs": EPOCHS, "seed": 0},
}


def decisions(service: Service, trial_ids: list[int]) -> dict[tuple[int, int], dict]:
    """Every stored decision, by (trial id, epoch)."""
    found = {}
    for trial_id in trial_ids:
        for entry in service.get(f"/trials/{trial_id}")["history"]:
            if "decision" in entry:
                found[(trial_id, entry["epoch"])] = entry["decision"]
    return found


def pruned_at_epoch_in_tensorboard(trial_folder: Path) -> list[tuple[int, float]]:
    """The `pruned_at_epoch` scalar of a trial's own folder, as TensorBoard reads it: (step, value) pairs."""
    accumulator = EventAccumulator(str(trial_folder), size_guidance={"tensors": 0})
    accumulator.Reload()
    if "pruned_at_epoch" not in accumulator.Tags()["tensors"]:
        return []
    return [(event.step, float(tensor_util.make_ndarray(event.tensor_proto)))
            for event in accumulator.Tensors("pruned_at_epoch")]


def test_pruned_trials_stop_after_their_epoch_and_a_killed_server_changes_no_decision(processes, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the page part needs Playwright")
    if shutil.which("chromium") is None:
        pytest.skip("the page part needs Debian's Chromium (.ci/run installs it)")
    service = Service(processes, tmp_path)
    service.start_worker(cpu_workers=2)
    sweep_id = service.submit(TUNING_SPEC)
    wait_until(lambda: any(t["state"] == "pruned" for t in service.trials(sweep_id))
               and any(t["state"] == "running" for t in service.trials(sweep_id)), 240,
               "a trial pruned while others train")
    before = decisions(service, [t["id"] for t in service.trials(sweep_id)])

    service.server.send_signal(signal.SIGKILL)
    service.server.wait()
    service.start_server("server-restarted")
    sweep = service.wait_for(sweep_id, "completed", timeout=400)

    trials = service.trials(sweep_id)
    after = decisions(service, [t["id"] for t in trials])
    assert {key: after[key] for key in before} == before, "a decision answered before the kill changed"
    assert len(trials) == TRIALS and sweep["trial_counts"]["completed"] + sweep["trial_counts"]["pruned"] == TRIALS, \
        processes.logs()
    assert len({(t["hparams"]["units"], t["hparams"]["learning_rate"]) for t in trials}) == TRIALS
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned, "ASHA pruned no trial of 8"
    for trial in trials:
        assert trial["attempts"] == 1, (trial["id"], "handed out twice")
        history = service.get(f"/trials/{trial['id']}")["history"]
        epochs = [entry["epoch"] for entry in history]
        if trial["state"] == "pruned":
            # It stopped after the epoch it was pruned at: nothing trained or reported after it.
            assert epochs == list(range(trial["pruned_at_epoch"] + 1)), (trial["id"], epochs)
            assert history[-1]["decision"]["action"] == "prune"
            assert "is not in the top 1/3" in trial["prune_reason"]
            assert trial["metrics"]["val_accuracy"] == history[-1]["metrics"]["val_accuracy"]
            # TensorBoard tells it from a completed trial: its folder has the epochs it trained. The prune of
            # the last trial completes the sweep, as its worker writes that trial's last logs: they may come
            # a moment after.
            epochs_trained = trial["pruned_at_epoch"] + 1
            folder = tmp_path / "runs" / str(sweep_id) / f"trial-{trial['number']:04d}"
            wait_until(lambda: pruned_at_epoch_in_tensorboard(folder) == [(epochs_trained - 1, float(epochs_trained))],
                       60, f"trial {trial['number']}'s pruned_at_epoch in TensorBoard")
        else:
            folder = tmp_path / "runs" / str(sweep_id) / f"trial-{trial['number']:04d}"
            assert pruned_at_epoch_in_tensorboard(folder) == []
            assert epochs == list(range(EPOCHS)), (trial["id"], epochs)
            assert all(entry["decision"]["action"] == "continue" for entry in history)

    # The page marks each pruned trial "pruned @ N", N the epochs it trained, and counts them apart.
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"))
        try:
            page = browser.new_page()
            page.goto(f"{service.url}/#/sweeps/{sweep_id}")
            expect = sync_api.expect
            expect(page.locator(".trials-table tbody tr")).to_have_count(TRIALS)
            for trial in trials:
                badge = page.locator(f".trials-table tr[data-trial-id='{trial['id']}'] td.state .badge")
                expect(badge).to_have_text(f"pruned @ {trial['pruned_at_epoch'] + 1}" if trial["state"] == "pruned"
                                           else "completed")
            expect(page.locator(".counts .count")).to_contain_text([f"{len(pruned)} pruned"])
        finally:
            browser.close()
