"""Benchmark: TPE + ASHA against random search on real Keras training, at equal wall time.

bench/search.py measures adaptive search and early stopping on an analytic objective, in epochs; this
one trains the digits MLP (the built-in `digits` dataset, the `mlp` model) with TensorFlow, so that
what counts is what a user waits for: the best `val_accuracy` after a fixed number of minutes.

For each search seed, run one after the other in this one invocation, each on its own fresh server:

- random search: `search.strategy: random`, no stopping rule;
- TPE + ASHA: `search.strategy: tpe` and `stopping: {rule: asha, min_epochs: 1, reduction_factor: 3}`,
  so with 27 epochs a trial is judged after 1, 3, 9 and 27 epochs.

Both search the same space, where configurations really differ (a learning rate over three and a half
decades, 16 to 256 units, 1 to 3 layers, dropout up to 0.5, adam or sgd), with the same `train.seed`
and a `max_trials` that the budget, not the search, runs out before. Each run is a real `sweeper serve`
process (SQLite file and logdir in a temporary folder, no tokens) and one `sweeper worker --gpus none
--cpu-workers 2` process, started once the sweep exists. The clock starts with the worker command
(so both sides pay TensorFlow's start-up alike) and at the budget the sweep is cancelled through the
API (`POST /api/v1/sweeps/{id}/cancel`): running trials stop at their next epoch report, then the
worker is stopped. The figures come from the API afterwards: each trial's state and its `history`.

Exits 1 on a correctness failure only (a trial failed, retried or left running, a sweep that failed,
a pruned trial whose history does not end where it was pruned, an ASHA decision that contradicts its
own cutoff, a worker that died), never on a missed target. `make bench` runs it after bench/search.py.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

# Scripts in bench/ run with their folder on sys.path; said explicitly so that loading this file from
# elsewhere (a test, say) finds the shared helpers too.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import API, BIN, SERVER_ENV, finish, running_server, verdict  # noqa: E402

EPOCHS = 27
"""3**3: with min_epochs 1 and reduction_factor 3, ASHA's rungs fall after 1, 3, 9 and 27 epochs."""
BUDGET_SECONDS = 270.0
"""Wall time each side gets: both sides with the servers' start and stop fit in about 10 minutes."""
MAX_TRIALS = 1000
"""Far more than either side starts within the budget, so the budget ends both searches."""
CPU_WORKERS = 2
TRAIN_SEED = 0
OBJECTIVE = "val_accuracy"
WORKER_ENV = {**SERVER_ENV, "TF_CPP_MIN_LOG_LEVEL": "2"}


@dataclass(frozen=True)
class Side:
    label: str
    strategy: str
    asha: bool


SIDES = [Side("random", "random", False), Side("TPE+ASHA", "tpe", True)]


def sweep_spec(side: Side, seed: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": f"keras-search-{side.strategy}{'-asha' if side.asha else ''}-{seed}",
        "model": "mlp",
        "dataset": "digits",
        "objective": {"metric": OBJECTIVE, "goal": "maximize"},
        "hparams": {
            "learning_rate": {"type": "real_interval", "min": 1e-4, "max": 0.3, "log": True},
            "units": {"type": "discrete", "values": [16, 32, 64, 128, 256]},
            "depth": {"type": "int_interval", "min": 1, "max": 3},
            "dropout": {"type": "real_interval", "min": 0.0, "max": 0.5},
            "optimizer": {"type": "discrete", "values": ["adam", "sgd"]},
            "batch_size": 32,
        },
        "search": {"strategy": side.strategy, "max_trials": MAX_TRIALS, "seed": seed},
        "train": {"epochs": EPOCHS, "validation_split": 0.2, "seed": TRAIN_SEED},
    }
    if side.asha:
        spec["stopping"] = {"rule": "asha", "min_epochs": 1, "reduction_factor": 3}
    return spec


@dataclass(frozen=True)
class Clock:
    """When one side's run began and ended, on the wall clock that the server's timestamps use too."""

    launched_at: datetime
    """The worker command started: the budget's start."""
    cancelled_at: datetime
    """The cancel was sent: the budget's end."""
    wall: float
    """Seconds from the one to the other, by the monotonic clock."""
    stop_seconds: float
    """From the cancel until no trial was running."""


@dataclass
class Outcome:
    """One side's run on one seed, as the API reported it afterwards."""

    side: Side
    seed: int
    clock: Clock
    status: str
    states: dict[str, int]
    started: int
    epochs: int
    best_completed: float | None
    best_reached: float | None
    """Best objective any trial reached at its last reported epoch, pruned and cut-off trials included."""
    busy_share: float
    """Trial-seconds (claim to finish, up to the cancel) over worker-seconds within the budget: how much of
    the workers' time the server kept them in a trial rather than waiting for a claim. Worker-side costs
    (TensorFlow's import, a model's build, clearing the session) count as trial time: the worker holds
    its trial through them."""
    first_claim: float
    """Seconds from the worker command's start to the first claim (the worker processes claim before they
    import TensorFlow, so that import falls in the first trial)."""
    at_cancel: dict[str, int]
    """The trials running when the cancel was sent, by the state they ended in."""
    pruned_at_end: int
    """Trials pruned by the rung at the last epoch: they trained every epoch, yet did not complete."""
    best_found_after: float | None
    """Seconds from the worker command's start until the first completed trial with the best value ended."""
    problems: list[str] = field(default_factory=list)

    @property
    def epochs_per_trial(self) -> float:
        return self.epochs / self.started if self.started else math.nan

    @property
    def seconds_per_epoch(self) -> float:
        """Worker-seconds per epoch trained: an epoch's training plus its share of each trial's fixed costs
        (building and compiling the model, tracing the first step, clearing the session)."""
        return CPU_WORKERS * self.clock.wall / self.epochs if self.epochs else math.nan


def parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def stop_worker(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM the worker command (its children finish their epoch and release their trial), then kill."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def check_decisions(trial: dict[str, Any], history: list[dict[str, Any]]) -> list[str]:
    """ASHA's answers against the cutoffs they state (goal maximize), and where a pruned trial ended."""
    problems = []
    for position, entry in enumerate(history):
        decision = entry.get("decision")
        if decision is None:
            # The report a cancelled trial sends after the cancel is answered "cancel" and not judged.
            if trial["state"] == "cancelled" and position == len(history) - 1:
                continue
            problems.append(f"trial {trial['id']} epoch {entry['epoch']}: no stopping decision stored")
            continue
        value, cutoff = decision.get("value"), decision.get("cutoff")
        at_rung = decision.get("rung_epochs") == entry["epoch"] + 1
        if not at_rung or value is None or cutoff is None:
            continue
        if decision["action"] == "prune" and value >= cutoff:
            problems.append(f"trial {trial['id']} pruned at epoch {entry['epoch']} with {value} >= cutoff {cutoff}")
        if decision["action"] == "continue" and value < cutoff:
            problems.append(f"trial {trial['id']} went on at epoch {entry['epoch']} with {value} < cutoff {cutoff}")
    if trial["state"] == "pruned":
        if not history or trial["pruned_at_epoch"] != history[-1]["epoch"]:
            last = history[-1]["epoch"] if history else None
            problems.append(f"trial {trial['id']} pruned at epoch {trial['pruned_at_epoch']} but its history "
                            f"ends at epoch {last}")
        elif history[-1]["decision"]["action"] != "prune":
            problems.append(f"trial {trial['id']} is pruned but its last decision says continue")
    return problems


def collect(http: httpx.Client, sweep_id: int, side: Side, seed: int, clock: Clock) -> Outcome:
    sweep = http.get(f"{API}/sweeps/{sweep_id}").raise_for_status().json()
    trials = http.get(f"{API}/sweeps/{sweep_id}/trials", params={"limit": 100_000}).raise_for_status().json()["data"]
    problems: list[str] = []
    if sweep["status"] != "cancelled":
        problems.append(f"sweep {sweep_id} ended {sweep['status']} (reason: {sweep['reason']}), not cancelled")
    states: dict[str, int] = {}
    epochs = 0
    busy = 0.0
    best_completed: float | None = None
    best_reached: float | None = None
    pruned_at_end = 0
    at_cancel: dict[str, int] = {}
    started = [trial for trial in trials if trial["started_at"] is not None]
    for trial in trials:
        states[trial["state"]] = states.get(trial["state"], 0) + 1
        if trial["state"] in ("failed", "running") or (trial["state"] == "pending" and trial["attempts"]):
            problems.append(f"trial {trial['id']} (index {trial['index']}) left {trial['state']}, "
                            f"attempts {trial['attempts']}: {trial['error']}")
        if trial["attempts"] > 1:
            problems.append(f"trial {trial['id']} (index {trial['index']}) took {trial['attempts']} attempts: "
                            f"a worker lost it or it failed ({trial['failure_kind']}: {trial['error']})")
    for trial in started:
        history = http.get(f"{API}/trials/{trial['id']}").raise_for_status().json()["history"]
        epochs += len(history)
        begun, ended = parse_time(trial["started_at"]), parse_time(trial["finished_at"])
        assert begun is not None
        if begun <= clock.cancelled_at:
            busy += ((min(ended, clock.cancelled_at) if ended else clock.cancelled_at) - begun).total_seconds()
            if ended is None or ended > clock.cancelled_at:
                at_cancel[trial["state"]] = at_cancel.get(trial["state"], 0) + 1
        if history:
            reached = history[-1]["metrics"].get(OBJECTIVE)
            if reached is not None and (best_reached is None or reached > best_reached):
                best_reached = reached
        if trial["state"] == "completed":
            if len(history) != EPOCHS:
                problems.append(f"trial {trial['id']} completed after {len(history)} of {EPOCHS} epochs")
            value = trial["metrics"].get(OBJECTIVE)
            if value is not None and (best_completed is None or value > best_completed):
                best_completed = value
        if trial["state"] == "pruned" and trial["pruned_at_epoch"] == EPOCHS - 1:
            pruned_at_end += 1
        if side.asha:
            problems += check_decisions(trial, history)
        elif any("decision" in entry for entry in history):
            problems.append(f"trial {trial['id']}: a stopping decision in a sweep without a stopping rule")
    indexes = sorted(trial["index"] for trial in started)
    if indexes != list(range(len(started))):
        problems.append(f"the started trials' indexes are not 0..{len(started) - 1}: a configuration skipped")
    best = sweep["best_trial"]
    if best_completed is not None and (best is None or best["metrics"].get(OBJECTIVE) != best_completed):
        problems.append(f"the sweep's best_trial ({best and best['metrics'].get(OBJECTIVE)}) is not the best "
                        f"completed trial ({best_completed})")
    winners = [parse_time(trial["finished_at"]) for trial in started
               if trial["state"] == "completed" and trial["metrics"].get(OBJECTIVE) == best_completed]
    found = min((when for when in winners if when is not None), default=None)
    best_found_after = (found - clock.launched_at).total_seconds() if found else None
    first = min((parse_time(trial["started_at"]) for trial in started), default=None)
    first_claim = (first - clock.launched_at).total_seconds() if first else math.nan
    return Outcome(side, seed, clock, sweep["status"], states, len(started), epochs, best_completed, best_reached,
                   busy / (CPU_WORKERS * clock.wall), first_claim, at_cancel, pruned_at_end, best_found_after,
                   problems)


def run_side(work: Path, side: Side, seed: int, budget: float, console: Console) -> Outcome:
    name = f"{side.strategy}{'-asha' if side.asha else ''}-{seed}"
    with running_server(work, name) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        sweep_id = int(http.post(f"{API}/sweeps", json=sweep_spec(side, seed)).raise_for_status().json()["id"])
        log_path = work / f"{name}-worker.log"
        with log_path.open("wb") as log:
            launched_at = datetime.now(UTC)
            started = time.perf_counter()
            worker = subprocess.Popen(
                [str(BIN / "sweeper"), "worker", "--server", server.url, "--gpus", "none",
                 "--cpu-workers", str(CPU_WORKERS), "--data-root", str(work / "data")],
                stdout=log, stderr=subprocess.STDOUT, env=WORKER_ENV)
            problems: list[str] = []
            try:
                # Poll rather than sleep through the budget: a failed sweep or a dead worker ends the run.
                while (elapsed := time.perf_counter() - started) < budget:
                    time.sleep(min(2.0, budget - elapsed))
                    status = http.get(f"{API}/sweeps/{sweep_id}").raise_for_status().json()["status"]
                    if status != "running":
                        problems.append(f"sweep {sweep_id} became {status} after {elapsed:.0f} s, before the budget")
                        break
                    if worker.poll() is not None:
                        problems.append(f"the worker command exited with {worker.returncode} after {elapsed:.0f} s")
                        break
                cancelled_at = datetime.now(UTC)
                wall = time.perf_counter() - started
                http.post(f"{API}/sweeps/{sweep_id}/cancel").raise_for_status()
                # The running trials stop at their next epoch report; wait for that, so none is cut mid-epoch.
                deadline = time.monotonic() + 60
                while http.get(f"{API}/sweeps/{sweep_id}").raise_for_status().json()["trial_counts"]["running"]:
                    if time.monotonic() > deadline:
                        problems.append("trials still running 60 s after the cancel")
                        break
                    time.sleep(0.2)
                stop_seconds = time.perf_counter() - started - wall
            finally:
                code = stop_worker(worker)
        if code not in (0, -signal.SIGTERM):
            problems.append(f"the worker command exited with {code} when stopped")
        outcome = collect(http, sweep_id, side, seed, Clock(launched_at, cancelled_at, wall, stop_seconds))
    outcome.problems = problems + outcome.problems
    if outcome.problems:
        console.print(f"[red]{side.label}, seed {seed}[/]: the worker's log ends:\n{log_path.read_text()[-3000:]}")
    return outcome


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def results_table(outcomes: list[Outcome], budget: float) -> Table:
    """One column per run: the runs are few and the rows many, so it fits a narrow terminal."""
    table = Table(title=f"Digits MLP, {EPOCHS} epochs, {CPU_WORKERS} CPU workers, {budget:.0f} s of wall time each")
    table.add_column("")
    for outcome in outcomes:
        table.add_column(f"{outcome.side.label}, seed {outcome.seed}", justify="right")
    rows: list[tuple[str, Callable[[Outcome], str]]] = [
        ("wall s (worker start to cancel)", lambda o: f"{o.clock.wall:.1f}"),
        ("trials started", lambda o: str(o.started)),
        ("trials completed", lambda o: str(o.states.get("completed", 0))),
        ("trials pruned", lambda o: str(o.states.get("pruned", 0))),
        (f"  of them after all {EPOCHS} epochs", lambda o: str(o.pruned_at_end)),
        ("trials cut off by the budget (cancelled)", lambda o: str(o.states.get("cancelled", 0))),
        ("epochs trained (reported)", lambda o: f"{o.epochs:,}"),
        ("epochs per trial started", lambda o: f"{o.epochs_per_trial:.1f}"),
        ("worker-seconds per epoch trained", lambda o: f"{o.seconds_per_epoch:.3f}"),
        ("best val_accuracy, completed trials", lambda o: fmt(o.best_completed)),
        ("best val_accuracy reached by any trial, at its last epoch (pruned, cut off included)",
         lambda o: fmt(o.best_reached)),
        ("best completed trial finished after, s",
         lambda o: "-" if o.best_found_after is None else f"{o.best_found_after:.0f}"),
        ("worker start to first claim, s", lambda o: f"{o.first_claim:.1f}"),
        ("workers busy (trial time / worker time)", lambda o: f"{o.busy_share:.0%}"),
        ("running at the cancel, by how they ended", lambda o: ", ".join(
            f"{count} {state}" for state, count in sorted(o.at_cancel.items())) or "none"),
        ("cancel until no trial running, s", lambda o: f"{o.clock.stop_seconds:.1f}"),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(outcome) for outcome in outcomes))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=BUDGET_SECONDS, help="wall seconds each side gets")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="search seeds, each run on both sides")
    args = parser.parse_args()

    console = Console()
    console.print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                  f"load average {os.getloadavg()[0]:.2f} at start")
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="sweeper-bench-") as tmp:
        for seed in args.seeds:
            for side in SIDES:
                outcome = run_side(Path(tmp), side, seed, args.budget, console)
                console.print(f"{side.label}, seed {seed}: {outcome.started} trials, {outcome.epochs} epochs, "
                              f"best {fmt(outcome.best_completed)} (load average {os.getloadavg()[0]:.2f})")
                outcomes.append(outcome)
    console.print(results_table(outcomes, args.budget))

    wins = 0
    for seed in args.seeds:
        random_best, tpe_best = (next(o.best_completed for o in outcomes if o.seed == seed and o.side is side)
                                 for side in SIDES)
        met = tpe_best is not None and (random_best is None or tpe_best >= random_best)
        wins += met
        console.print(f"seed {seed}: TPE+ASHA best {fmt(tpe_best)}, random best {fmt(random_best)}: {verdict(met)}")
    console.print(f"Target: TPE+ASHA's best completed val_accuracy >= random search's at equal wall time: "
                  f"{verdict(wins == len(args.seeds))} on {wins} of {len(args.seeds)} seed(s)"
                  f"{' (one seed: a single draw, not a distribution)' if len(args.seeds) == 1 else ''}")
    finish(console, [f"{o.side.label}, seed {o.seed}: {problem}" for o in outcomes for problem in o.problems])


if __name__ == "__main__":
    main()
