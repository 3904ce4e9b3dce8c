"""Benchmark: what adaptive search and early stopping buy in epochs, and what the sampler costs the server.

Two parts, run one after the other in this one invocation (`--part` runs one):

- sample efficiency, nothing trained: a real server process (`sweeper serve`, SQLite in a temporary
  folder, no tokens) and a simulated fleet of 8 workers (asyncio tasks, each its own worker id and httpx
  client) speaking the worker protocol: claim, report every epoch, stop when the answer is "prune",
  complete. The objective is analytic: Hartmann6 over six real hparams x1..x6 in [0, 1], minimized (the
  spec's objective is val_loss, goal minimize; the known optimum is -3.32237), reached after 27 epochs
  by a learning curve whose shape depends on the configuration, so that some slow starters end best.
  Random search, random + ASHA, TPE and TPE + ASHA get the same max_trials, over 5 seeds each (random
  search with and without ASHA draw the same configurations for a seed, which isolates the rule). What
  counts is epochs trained, since epochs are what a real sweep pays for: how many epochs each needs to
  find random search's final best, and how far from the optimum each is after equal epochs;
- sampler cost: a TPE sweep with 1,000 finished trials (rows written straight into the database, as
  the server writes them, for speed) and 64 running: the latency of lone claims, the time for 64
  simultaneous claims to all be answered, and how long the first claim takes after a restart, when
  the server rebuilds the sweep's study from its tables.

Latency is measured by the client. After each sweep the database is audited: every trial claimed once,
no configuration proposed twice, every pruned trial stopped where the server said, and each ASHA
decision replayed from the stored reports. Exits 1 on such a correctness failure only, never on a
missed target. `make bench` runs it after bench/claims.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
import simulated_model  # noqa: E402
from claims import (API, BIN, SERVER_ENV, ServerProcess, finish, free_port, ms, percentile, run_async,  # noqa: E402
                    verdict)

# -- the objective: Hartmann6, reached through a learning curve -------------------------------------------

HARTMANN6_OPTIMUM = -3.32237
"""Hartmann6's global minimum, at about (0.2017, 0.1500, 0.4769, 0.2753, 0.3117, 0.6573)."""

_ALPHA = (1.0, 1.2, 3.0, 3.2)
_A = ((10, 3, 17, 3.5, 1.7, 8), (0.05, 10, 17, 0.1, 8, 14), (3, 3.5, 1.7, 10, 17, 8), (17, 8, 0.05, 10, 0.1, 14))
_P = ((0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886), (0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991),
      (0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650), (0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381))

HPARAMS = simulated_model.HPARAMS
EPOCHS = 27
"""Epochs a trial that is never stopped reports: 3**3, so ASHA's rungs (1, 3, 9, 27) end on the last one."""


def hartmann6(x: list[float]) -> float:
    return -sum(alpha * math.exp(-sum(a * (xj - p) ** 2 for a, xj, p in zip(row, x, centre)))
                for alpha, row, centre in zip(_ALPHA, _A, _P))


def curve_value(x: list[float], epoch: int) -> float:
    """The objective after `epoch` (from 0): Hartmann6 exactly after the last epoch, above it before.

    value = final + gap * (exp(-rate * trained) - exp(-rate * EPOCHS)), trained = epoch + 1. x1 plays a
    learning rate's part: the smaller, the slower the curve falls (rate 0.04 to 0.44 per epoch); x5 sets
    how far above its final value the curve starts (gap 0.5 to 1.5). Hartmann6's optimum has x1 = 0.20,
    a slow curve, so configurations near it look worse after a few epochs than they end, and some that
    lead at the first rungs end behind them: the case early stopping can get wrong.
    """
    rate = 0.04 + 0.4 * x[0]
    gap = 0.5 + x[4]
    trained = epoch + 1
    return hartmann6(x) + gap * (math.exp(-rate * trained) - math.exp(-rate * EPOCHS))


def train_loss(x: list[float], epoch: int) -> float:
    """The `loss` metric: below the validation value, further below as training goes on."""
    return curve_value(x, epoch) - 0.1 * (epoch + 1) / EPOCHS


ASHA_MIN_EPOCHS = 1
ASHA_REDUCTION = 3
"""The stopping rule of the ASHA sweeps: rungs after 1, 3, 9 and 27 epochs."""


def space() -> dict[str, Any]:
    return {name: {"type": "real_interval", "min": 0.0, "max": 1.0} for name in HPARAMS}


def sweep_spec(name: str, strategy: str, trials: int, seed: int, asha: bool) -> dict[str, Any]:
    """Nothing is trained, so the model and dataset only have to be valid: the plugin model reads x1..x6."""
    spec: dict[str, Any] = {
        "name": name,
        "model": "hartmann6",
        "dataset": "digits",
        "objective": {"metric": "val_loss", "goal": "minimize"},
        "hparams": space(),
        "search": {"strategy": strategy, "max_trials": trials, "seed": seed},
        "train": {"epochs": EPOCHS},
    }
    if asha:
        spec["stopping"] = {"rule": "asha", "min_epochs": ASHA_MIN_EPOCHS, "reduction_factor": ASHA_REDUCTION}
    return spec


STRATEGIES: dict[str, tuple[str, bool]] = {
    "random": ("random", False),
    "random+ASHA": ("random", True),
    "TPE": ("tpe", False),
    "TPE+ASHA": ("tpe", True),
}
"""Label: (search.strategy, whether ASHA stops trials)."""
BUDGET_SHARES = (0.25, 0.5, 1.0)
"""Shares of random search's epochs at which every strategy's best is compared."""
TARGET_SHARE = 0.25
"""TPE+ASHA should find random search's final best within this share of random search's epochs."""

PLUGIN_ENV = {**SERVER_ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                                      SERVER_ENV.get("PYTHONPATH")]))}
"""The server's environment, with this folder on the path for its plugin, simulated_model."""

TARGET_LONE_P50_SECONDS = 0.050
TARGET_BURST_SECONDS = 5.0
TARGET_REBUILD_SECONDS = 2.0


# -- the server, a real process -------------------------------------------------------------------------


@contextmanager
def serve(work: Path, database: Path, name: str) -> Iterator[tuple[ServerProcess, float]]:
    """`sweeper serve` on `database` (created if new) until the block ends, and the seconds it took from
    starting the process to answering /healthz. Polled every 10 ms: after a restart that time is set
    apart from the first claim's."""
    port = free_port()
    log_path = work / f"{name}.log"
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            [str(BIN / "sweeper"), "serve", "--host", "127.0.0.1", "--port", str(port),
             "--database-url", f"sqlite:///{database}", "--logdir", str(work / "runs"),
             "--plugins", simulated_model.__name__],
            stdout=log, stderr=subprocess.STDOUT, env=PLUGIN_ENV)
        try:
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(timeout=1) as probe:
                while True:
                    if process.poll() is not None:
                        raise SystemExit(f"the server exited with {process.returncode}:\n"
                                         f"{log_path.read_text()[-2000:]}")
                    try:
                        if probe.get(f"{url}/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.perf_counter() - started > 60:
                        raise SystemExit(f"the server did not start within 60 s:\n{log_path.read_text()[-2000:]}")
                    time.sleep(0.01)
            yield ServerProcess(url, database, process.pid), time.perf_counter() - started
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def create_sweep(url: str, spec: dict[str, Any]) -> int:
    answer = httpx.post(f"{url}{API}/sweeps", json=spec, timeout=60)
    if answer.status_code != 201:
        raise SystemExit(f"the server refused the sweep: {answer.status_code} {answer.text[:500]}")
    return int(answer.json()["id"])


def client(url: str) -> httpx.AsyncClient:
    # Plain HTTP, one keep-alive connection per worker, as a worker process has.
    return httpx.AsyncClient(base_url=url + API, timeout=120, verify=False,
                             limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))


# -- part 1: sample efficiency -------------------------------------------------------------------------------


@dataclass
class Run:
    """One sweep of one strategy and seed, as its fleet saw it."""

    label: str
    seed: int
    sweep_id: int = 0
    epochs: int = 0
    """Epochs reported so far, over all trials: the budget spent."""
    finals: list[tuple[int, float]] = field(default_factory=list)
    """(epochs spent when it arrived, value) for each trial that reported its last epoch."""
    pruned_at: dict[int, int | None] = field(default_factory=dict)
    """Each trial id, and the epoch whose report was answered "prune" (None: never)."""
    claim_latencies: list[float] = field(default_factory=list)
    report_latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min((value for _, value in self.finals), default=math.inf)

    def best_within(self, epochs: float) -> float:
        """The best final value found once no more than `epochs` epochs were spent."""
        return min((value for spent, value in self.finals if spent <= epochs), default=math.inf)

    def epochs_to_reach(self, target: float) -> float:
        """Epochs spent when a final value at least as good as `target` first arrived; inf if none did."""
        return next((float(spent) for spent, value in self.finals if value <= target + 1e-12), math.inf)

    @property
    def pruned(self) -> int:
        return sum(epoch is not None for epoch in self.pruned_at.values())

    @property
    def full(self) -> int:
        """Trials that trained every epoch (a trial pruned after its last one included)."""
        return len(self.finals)


async def fleet(url: str, run: Run, workers: int) -> None:
    """`workers` simulated workers drain the sweep: claim, report each epoch until pruned, complete."""

    async def worker(http: httpx.AsyncClient, worker_id: str) -> None:
        while True:
            started = time.perf_counter()
            answer = await http.post("/trials/claim", json={"worker_id": worker_id, "host": "bench"})
            elapsed = time.perf_counter() - started
            if answer.status_code == 204:
                return  # nothing left to hand out: the other workers finish the last trials
            if answer.status_code == 503:
                continue  # the database stayed busy past its timeout; a worker retries
            if answer.status_code != 200:
                run.problems.append(f"claim by {worker_id}: {answer.status_code} {answer.text[:200]}")
                return
            run.claim_latencies.append(elapsed)
            assignment = answer.json()
            trial_id, token = assignment["trial_id"], assignment["lease_token"]
            x = [float(assignment["hparams"][name]) for name in HPARAMS]
            run.pruned_at[trial_id] = None
            for epoch in range(EPOCHS):
                value = curve_value(x, epoch)
                body = {"worker_id": worker_id, "lease_token": token, "epoch": epoch,
                        "metrics": {"val_loss": value, "loss": train_loss(x, epoch)}}
                started = time.perf_counter()
                answer = await http.post(f"/trials/{trial_id}/metrics", json=body)
                run.report_latencies.append(time.perf_counter() - started)
                if answer.status_code != 200:
                    run.problems.append(f"report of trial {trial_id} epoch {epoch}: {answer.status_code} "
                                        f"{answer.text[:200]}")
                    return
                # The epoch counts once its report is in, whatever the answer: it was trained.
                run.epochs += 1
                if epoch == EPOCHS - 1:
                    run.finals.append((run.epochs, value))
                action = answer.json()["action"]
                if action == "prune":
                    run.pruned_at[trial_id] = epoch
                    break
                if action != "continue":
                    run.problems.append(f"trial {trial_id} epoch {epoch}: unexpected action {action!r}")
                    return
            done = {"worker_id": worker_id, "lease_token": token,
                    "metrics": {"val_loss": value, "loss": train_loss(x, epoch)}}
            answer = await http.post(f"/trials/{trial_id}/complete", json=done)
            if answer.status_code != 200:
                run.problems.append(f"complete of trial {trial_id}: {answer.status_code} {answer.text[:200]}")
                return

    https = [client(url) for _ in range(workers)]
    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker(http, f"bench-{run.label}-{run.seed}-{number}")
                               for number, http in enumerate(https)))
        run.seconds = time.perf_counter() - started
    finally:
        await asyncio.gather(*(http.aclose() for http in https))


def _promotable(value: float, competing: list[float]) -> bool:
    """Successive halving's rule (minimizing): in the top 1/reduction_factor of the values at the rung, the
    trial's own included; while fewer than reduction_factor reached it, only the best goes on."""
    keep = max(len(competing) // ASHA_REDUCTION, 1)
    return value <= sorted(competing)[keep - 1]


def audit_run(database: Path, run: Run, trials: int, asha: bool) -> list[str]:
    """What the database says went wrong with the run's sweep; [] when nothing did."""
    problems: list[str] = []
    with sqlite3.connect(database) as connection:
        status, next_index = connection.execute("SELECT status, next_index FROM sweeps WHERE id = ?",
                                                (run.sweep_id,)).fetchone()
        rows = connection.execute(
            "SELECT id, \"index\", state, attempts, hparams, pruned_at_epoch FROM trials WHERE sweep_id = ? "
            "ORDER BY \"index\"", (run.sweep_id,)).fetchall()
        reports = connection.execute(
            "SELECT e.trial_id, e.epoch, e.metrics, e.decision FROM trial_epochs e JOIN trials t ON t.id = e.trial_id "
            "WHERE t.sweep_id = ? ORDER BY e.id", (run.sweep_id,)).fetchall()
    if status != "completed" or next_index != trials or [row[1] for row in rows] != list(range(trials)):
        problems.append(f"sweep {status}, next_index {next_index}, {len(rows)} trials, for {trials}")
    twice = [row[0] for row in rows if row[3] != 1]
    if twice:
        problems.append(f"{len(twice)} trial(s) claimed more than once (attempts != 1): {twice[:5]}")
    configs = [json.dumps(json.loads(row[4]), sort_keys=True) for row in rows]
    if len(set(configs)) != len(configs):
        problems.append(f"{len(configs) - len(set(configs))} configuration(s) proposed twice")
    epochs_of: dict[int, list[int]] = defaultdict(list)
    for trial_id, epoch, _, _ in reports:
        epochs_of[trial_id].append(epoch)
    for trial_id, _, state, _, _, pruned_at_epoch in rows:
        if trial_id not in run.pruned_at:
            problems.append(f"trial {trial_id} is in the sweep, but no worker of the fleet claimed it")
            continue
        told = run.pruned_at[trial_id]
        expected_state = "completed" if told is None else "pruned"
        if state != expected_state or pruned_at_epoch != told:
            problems.append(f"trial {trial_id}: {state}, pruned_at_epoch {pruned_at_epoch}, but its worker was "
                            f"told prune at {told}")
        last = EPOCHS - 1 if told is None else told
        if sorted(epochs_of[trial_id]) != list(range(last + 1)):
            problems.append(f"trial {trial_id}: epochs {sorted(epochs_of[trial_id])} stored, 0..{last} reported")
    if not asha:
        judged = sum(decision is not None for *_, decision in reports)
        if judged:
            problems.append(f"{judged} report(s) judged in a sweep without a stopping rule")
        return problems
    # Successive halving replayed over the reports in the order the server stored (and judged) them: a
    # trial records its value at each rung it reaches and goes on only if it is promotable there.
    at_rung: dict[int, list[float]] = defaultdict(list)
    rung_of: dict[int, int] = defaultdict(int)
    wrong: list[str] = []
    for trial_id, epoch, metrics, decision in reports:
        value = float(json.loads(metrics)["val_loss"])
        step, rung, prune = epoch + 1, rung_of[trial_id], False
        # The last epoch is never judged: stopping there would save nothing.
        while step < EPOCHS and step >= ASHA_MIN_EPOCHS * ASHA_REDUCTION ** rung:
            competing = [*at_rung[rung], value]
            at_rung[rung].append(value)
            if not _promotable(value, competing):
                prune = True
                break
            rung += 1
        rung_of[trial_id] = rung
        stored = json.loads(decision)["action"] if decision else None
        if stored != ("prune" if prune else "continue"):
            wrong.append(f"trial {trial_id} epoch {epoch}: stored {stored}, the rule says "
                         f"{'prune' if prune else 'continue'}")
    if wrong:
        problems.append(f"{len(wrong)} stopping decision(s) differ from successive halving replayed: {wrong[:3]}")
    return problems


def sample_efficiency(work: Path, trials: int, seeds: range, workers: int, labels: list[str]
                      ) -> tuple[list[Run], float]:
    """Every strategy on every seed, one sweep after another on one server; the runs and the seconds."""
    runs: list[Run] = []
    started = time.perf_counter()
    with serve(work, work / "search.db", "search") as (server, _):
        # Seeds outermost, so that any drift in the machine's load falls on all strategies alike.
        for seed in seeds:
            for label in labels:
                strategy, asha = STRATEGIES[label]
                run = Run(label, seed)
                name = f"{label.lower().replace('+', '-')}-{seed}"
                run.sweep_id = create_sweep(server.url, sweep_spec(name, strategy, trials, seed, asha))
                run_async(fleet(server.url, run, workers))
                run.problems += audit_run(server.database, run, trials, asha)
                runs.append(run)
    return runs, time.perf_counter() - started


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def share(value: float) -> str:
    return "not reached" if math.isinf(value) else f"{value:.1%}"


def regret(value: float) -> str:
    return "none yet" if math.isinf(value) else f"{value - HARTMANN6_OPTIMUM:.3f}"


def efficiency_tables(runs: list[Run], trials: int, workers: int) -> tuple[list[Table], bool]:
    """The comparison tables, and whether TPE+ASHA met its target."""
    by_label: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_label[run.label].append(run)
    baseline = {run.seed: run for run in by_label["random"]}
    seeds = sorted(baseline)

    def to_reach(run: Run) -> float:
        """Epochs `run` needed to find random search's final best, as a share of random search's epochs."""
        reference = baseline[run.seed]
        return run.epochs_to_reach(reference.best) / reference.epochs

    main = Table(title=f"Sample efficiency: Hartmann6 through {EPOCHS}-epoch learning curves, {trials} trials per "
                       f"sweep, {workers} workers; median of {len(seeds)} seeds (minimized; regret = best - optimum)")
    main.add_column("")
    for label in by_label:
        main.add_column(label, justify="right")

    def row(name: str, value: Callable[[list[Run]], str]) -> None:
        main.add_row(name, *(value(group) for group in by_label.values()))

    row("epochs trained", lambda group: f"{median([run.epochs for run in group]):,.0f}")
    row("  share of random's epochs",
        lambda group: f"{median([run.epochs / baseline[run.seed].epochs for run in group]):.1%}")
    row("trials that ran every epoch", lambda group: f"{median([run.full for run in group]):.0f}")
    row("trials pruned (after any epoch, the last included)",
        lambda group: f"{median([run.pruned for run in group]):.0f}")
    row("epochs to random's final best, share of random's",
        lambda group: share(median([to_reach(run) for run in group])))
    row("  seeds that reached it", lambda group: f"{sum(not math.isinf(to_reach(run)) for run in group)}/{len(group)}")
    for budget in BUDGET_SHARES:
        row(f"regret after {budget:.0%} of random's epochs",
            lambda group, budget=budget: regret(median([run.best_within(budget * baseline[run.seed].epochs)
                                                        for run in group])))
    row("regret at its own end", lambda group: regret(median([run.best for run in group])))
    tpe_asha = median([to_reach(run) for run in by_label["TPE+ASHA"]])
    met = tpe_asha <= TARGET_SHARE
    main.caption = (f"target: TPE+ASHA finds random search's final best within {TARGET_SHARE:.0%} of random "
                    f"search's epochs: {verdict(met)} (median {share(tpe_asha)})")

    per_seed = Table(title="Per seed: epochs to random search's final best, as a share of random search's epochs")
    per_seed.add_column("strategy")
    for seed in seeds:
        per_seed.add_column(f"seed {seed}", justify="right")
    per_seed.add_row("random's best (regret)", *(regret(baseline[seed].best) for seed in seeds))
    per_seed.add_row("random's epochs", *(f"{baseline[seed].epochs:,}" for seed in seeds))
    for label, group in by_label.items():
        per_seed.add_row(label, *(share(to_reach(run)) for run in sorted(group, key=lambda run: run.seed)))

    cost = Table(title="The server as the fleet saw it, all seeds together (client-measured latency)")
    cost.add_column("")
    for label in by_label:
        cost.add_column(label, justify="right")

    def cost_row(name: str, value: Callable[[list[Run]], str]) -> None:
        cost.add_row(name, *(value(group) for group in by_label.values()))

    def latencies(group: list[Run], kind: str) -> list[float]:
        return [latency for run in group for latency in getattr(run, f"{kind}_latencies")]

    cost_row("claims", lambda group: f"{len(latencies(group, 'claim')):,}")
    cost_row("claim p50 / p99 ms", lambda group: f"{ms(percentile(latencies(group, 'claim'), 0.5))} / "
                                                 f"{ms(percentile(latencies(group, 'claim'), 0.99))}")
    cost_row("epoch reports", lambda group: f"{len(latencies(group, 'report')):,}")
    cost_row("report p50 / p99 ms", lambda group: f"{ms(percentile(latencies(group, 'report'), 0.5))} / "
                                                  f"{ms(percentile(latencies(group, 'report'), 0.99))}")
    cost_row("seconds", lambda group: f"{sum(run.seconds for run in group):.1f}")
    cost_row("trials pruned after their last epoch",
             lambda group: str(sum(run.pruned_at[trial] == EPOCHS - 1 for run in group for trial in run.pruned_at)))
    return [main, per_seed, cost], met


# -- part 2: what the sampler costs -------------------------------------------------------------------------


FINISHED = 1_000
RUNNING = 64


def insert_finished(database: Path, sweep_id: int, count: int, seed: int = 0) -> None:
    """`count` completed trials of the TPE sweep, written straight into its database as the server writes
    them: hparams from the space, the objective and loss in metrics and at every epoch, one attempt, the
    sampler's state (TPE keeps nothing for its first 10 random trials, then the params it proposed)."""
    draw = random.Random(seed)
    stamp = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    trials, epochs = [], []
    for index in range(count):
        x = [draw.random() for _ in HPARAMS]
        config = dict(zip(HPARAMS, x))
        state = {} if index < 10 else {"tpe:relative_params:0": json.dumps(config)}
        final = {"val_loss": curve_value(x, EPOCHS - 1), "loss": train_loss(x, EPOCHS - 1)}
        trials.append((sweep_id, index, "completed", json.dumps(config), json.dumps(final), 1, f"bench-{index % 8}",
                       None, 1, "complete", json.dumps(state), stamp, stamp, stamp))
        epochs += [(index, epoch, json.dumps({"val_loss": curve_value(x, epoch), "loss": train_loss(x, epoch)}), stamp)
                   for epoch in range(EPOCHS)]
    with sqlite3.connect(database, timeout=60) as connection:
        connection.executemany(
            "INSERT INTO trials (sweep_id, \"index\", state, hparams, metrics, attempts, worker_id, lease_expires_at, "
            "lease_token, lease_end, search_state, created_at, started_at, finished_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", trials)
        ids = dict(connection.execute("SELECT \"index\", id FROM trials WHERE sweep_id = ?", (sweep_id,)))
        # No stopping rule judged these reports: decision stays NULL.
        connection.executemany("INSERT INTO trial_epochs (trial_id, epoch, metrics, reported_at) VALUES (?, ?, ?, ?)",
                               [(ids[index], epoch, metrics, at) for index, epoch, metrics, at in epochs])
        connection.executemany("INSERT OR IGNORE INTO workers (id, host, first_seen_at, last_seen_at) "
                               "VALUES (?, 'bench', ?, ?)", [(f"bench-{number}", stamp, stamp) for number in range(8)])
        connection.execute("UPDATE sweeps SET next_index = ? WHERE id = ?", (count, sweep_id))


@dataclass
class Cost:
    insert_seconds: float = 0.0
    first_claim: float = 0.0
    """The first claim after the rows were inserted: the server builds the study from them."""
    burst: list[float] = field(default_factory=list)
    burst_seconds: float = 0.0
    burst_ids: list[int] = field(default_factory=list)
    lone: list[float] = field(default_factory=list)
    fresh_up_seconds: float = 0.0
    """From starting the process to /healthz answering, on the new database."""
    up_seconds: float = 0.0
    """The same after the restart, with the sweep's trials in the database."""
    rebuild_claim: float = 0.0
    """The first claim after the restart, which rebuilds the study."""
    after_rebuild: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def timed_claim(http: httpx.Client, worker_id: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    answer = http.post("/trials/claim", json={"worker_id": worker_id, "host": "bench"})
    elapsed = time.perf_counter() - started
    if answer.status_code != 200:
        raise SystemExit(f"claim by {worker_id}: {answer.status_code} {answer.text[:300]}")
    return elapsed, answer.json()


def complete(http: httpx.Client, worker_id: str, assignment: dict[str, Any]) -> None:
    x = [float(assignment["hparams"][name]) for name in HPARAMS]
    answer = http.post(f"/trials/{assignment['trial_id']}/complete",
                       json={"worker_id": worker_id, "lease_token": assignment["lease_token"],
                             "metrics": {"val_loss": curve_value(x, EPOCHS - 1), "loss": train_loss(x, EPOCHS - 1)}})
    if answer.status_code != 200:
        raise SystemExit(f"complete of trial {assignment['trial_id']}: {answer.status_code} {answer.text[:300]}")


async def burst(url: str, clients: int) -> tuple[float, list[float], list[dict[str, Any]]]:
    """`clients` workers claim at the same instant; the seconds until the last is answered, each latency, and
    the assignments."""
    https = [client(url) for _ in range(clients)]
    try:
        # Connections are opened first, so that the burst times claims, not TCP handshakes.
        await asyncio.gather(*(http.get("/sweeps", params={"limit": 1}) for http in https))

        async def claim(http: httpx.AsyncClient, worker_id: str) -> tuple[float, dict[str, Any]]:
            started = time.perf_counter()
            answer = await http.post("/trials/claim", json={"worker_id": worker_id, "host": "bench"})
            elapsed = time.perf_counter() - started
            if answer.status_code != 200:
                raise SystemExit(f"claim by {worker_id}: {answer.status_code} {answer.text[:300]}")
            return elapsed, answer.json()

        started = time.perf_counter()
        answers = await asyncio.gather(*(claim(http, f"fleet-{number}") for number, http in enumerate(https)))
        seconds = time.perf_counter() - started
    finally:
        await asyncio.gather(*(http.aclose() for http in https))
    return seconds, [latency for latency, _ in answers], [assignment for _, assignment in answers]


def audit_cost(database: Path, sweep_id: int, cost: Cost) -> list[str]:
    problems: list[str] = []
    if len(set(cost.burst_ids)) != len(cost.burst_ids):
        problems.append(f"the {len(cost.burst_ids)} simultaneous claims got {len(set(cost.burst_ids))} distinct trials")
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT id, \"index\", attempts, state, hparams FROM trials WHERE sweep_id = ?",
                                  (sweep_id,)).fetchall()
        next_index = connection.execute("SELECT next_index FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()[0]
    twice = [trial_id for trial_id, _, attempts, _, _ in rows if attempts != 1]
    if twice:
        problems.append(f"{len(twice)} trial(s) handed out more than once (attempts != 1): {twice[:5]}")
    if sorted(index for _, index, *_ in rows) != list(range(next_index)):
        problems.append(f"{len(rows)} trials for next_index {next_index}: an index skipped or repeated")
    running = sorted(trial_id for trial_id, _, _, state, _ in rows if state == "running")
    if running != sorted(cost.burst_ids):
        problems.append(f"{len(running)} trials running, not the {len(cost.burst_ids)} of the simultaneous claims")
    configs = [json.dumps(json.loads(hparams), sort_keys=True) for *_, hparams in rows]
    if len(set(configs)) != len(configs):
        problems.append(f"{len(configs) - len(set(configs))} configuration(s) proposed twice")
    return problems


def sampler_cost(work: Path, lone_claims: int, after_restart: int) -> Cost:
    cost = Cost()
    database = work / "cost.db"
    spec = sweep_spec("tpe-cost", "tpe", FINISHED + RUNNING + lone_claims + after_restart + 10, 0, asha=False)
    with serve(work, database, "cost") as (server, cost.fresh_up_seconds):
        sweep_id = create_sweep(server.url, spec)
        started = time.perf_counter()
        insert_finished(database, sweep_id, FINISHED)
        cost.insert_seconds = time.perf_counter() - started
        with httpx.Client(base_url=server.url + API, timeout=120) as http:
            cost.first_claim, assignment = timed_claim(http, "solo")
            complete(http, "solo", assignment)
            cost.burst_seconds, cost.burst, assignments = run_async(burst(server.url, RUNNING))
            cost.burst_ids = [assignment["trial_id"] for assignment in assignments]
            # Each lone claim is completed, so the 64 of the burst stay the running ones.
            for _ in range(lone_claims):
                latency, assignment = timed_claim(http, "solo")
                cost.lone.append(latency)
                complete(http, "solo", assignment)
            # The 64 workers are alive: their leases are renewed, as their heartbeats would.
            for assignment in assignments:
                number = cost.burst_ids.index(assignment["trial_id"])
                http.post(f"/trials/{assignment['trial_id']}/heartbeat",
                          json={"worker_id": f"fleet-{number}", "lease_token": assignment["lease_token"]})
    # The same database, a new process: the first claim rebuilds the study from the tables.
    with serve(work, database, "cost-restarted") as (server, cost.up_seconds):
        with httpx.Client(base_url=server.url + API, timeout=120) as http:
            cost.rebuild_claim, assignment = timed_claim(http, "solo")
            complete(http, "solo", assignment)
            for _ in range(after_restart):
                latency, assignment = timed_claim(http, "solo")
                cost.after_rebuild.append(latency)
                complete(http, "solo", assignment)
    cost.problems = audit_cost(database, sweep_id, cost)
    return cost


def cost_table(cost: Cost, lone_claims: int) -> Table:
    table = Table(title=f"Sampler cost: TPE sweep of 6 real hparams, {FINISHED:,} finished trials "
                        f"({EPOCHS} epochs each) and {RUNNING} running")
    for column in ("measure", "ms", "target"):
        table.add_column(column, justify="right")
    lone_p50 = percentile(cost.lone, 0.5)
    rebuild = cost.rebuild_claim - percentile(cost.after_rebuild, 0.5)
    table.add_row(f"rows inserted directly ({FINISHED:,} trials, {FINISHED * EPOCHS:,} epoch reports)",
                  ms(cost.insert_seconds), "")
    table.add_row("first claim after the insert (builds the study)", ms(cost.first_claim), "")
    table.add_row(f"lone claim p50 ({lone_claims} claims, {RUNNING} running)", ms(lone_p50),
                  f"< {TARGET_LONE_P50_SECONDS * 1000:.0f}: {verdict(lone_p50 < TARGET_LONE_P50_SECONDS)}")
    table.add_row("lone claim p99", ms(percentile(cost.lone, 0.99)), "")
    table.add_row(f"{RUNNING} simultaneous claims, until the last is answered", ms(cost.burst_seconds),
                  f"< {TARGET_BURST_SECONDS * 1000:.0f}: {verdict(cost.burst_seconds < TARGET_BURST_SECONDS)}")
    table.add_row("  their latency min / p50 / max",
                  f"{ms(min(cost.burst))} / {ms(percentile(cost.burst, 0.5))} / {ms(max(cost.burst))}", "")
    table.add_row("process start to /healthz answering, new database", ms(cost.fresh_up_seconds), "")
    table.add_row("restart: process start to /healthz answering", ms(cost.up_seconds), "")
    table.add_row("restart: first claim (rebuilds the study)", ms(cost.rebuild_claim),
                  f"< {TARGET_REBUILD_SECONDS * 1000:.0f}: {verdict(cost.rebuild_claim < TARGET_REBUILD_SECONDS)}")
    table.add_row(f"restart: next {len(cost.after_rebuild)} claims p50", ms(percentile(cost.after_rebuild, 0.5)), "")
    table.add_row("restart: the rebuild alone (first claim less that p50)", ms(rebuild), "")
    table.add_row(f"{RUNNING} simultaneous claims: distinct trials / handed out twice",
                  f"{len(set(cost.burst_ids))} / {len(cost.burst_ids) - len(set(cost.burst_ids))}", "")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["efficiency", "cost"], help="run one part only (default: both)")
    parser.add_argument("--trials", type=int, default=80, help="max_trials of every sweep of the efficiency part")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per strategy")
    parser.add_argument("--first-seed", type=int, default=0, help="the seed of the first sweep of each strategy")
    parser.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES),
                        help="strategies to compare (random is always run: it sets the budget and the target)")
    parser.add_argument("--workers", type=int, default=8, help="simulated workers")
    parser.add_argument("--lone-claims", type=int, default=50, help="sequential claims timed in the cost part")
    args = parser.parse_args()

    console = Console()
    console.print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                  f"load average {os.getloadavg()[0]:.2f} at start")
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sweeper-search-") as tmp:
        work = Path(tmp)
        if args.part in (None, "efficiency"):
            runs, seconds = sample_efficiency(
                work, args.trials, range(args.first_seed, args.first_seed + args.seeds), args.workers,
                ["random", *(label for label in args.strategies if label != "random")])
            tables, _ = efficiency_tables(runs, args.trials, args.workers)
            for table in tables:
                console.print(table)
            console.print(f"sample efficiency: {seconds:.0f} s")
            failures += [f"{run.label} seed {run.seed}: {problem}" for run in runs for problem in run.problems]
        if args.part in (None, "cost"):
            cost = sampler_cost(work, args.lone_claims, after_restart=10)
            console.print(cost_table(cost, args.lone_claims))
            failures += [f"sampler cost: {problem}" for problem in cost.problems]
    finish(console, failures)


if __name__ == "__main__":
    main()
