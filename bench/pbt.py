"""Benchmark: Population Based Training against random search on a problem no fixed learning rate solves well.

The toy is Ray Tune's `pbt_function` example: a member's "accuracy" grows fastest when its learning rate
is near an optimum that itself moves as the accuracy grows (from 0.001 up to 0.01 at accuracy 100, then
down to 0.001 at 200); a rate more than 3 times off the optimum earns nothing, or, when too high, loses
accuracy. Each epoch is STEPS steps of it, with seeded noise. A fixed learning rate is right only for a
stretch of training; a changing one can follow the optimum.

A real server process (`python -m cli serve`, this checkout's code, SQLite in a temporary folder) and a
simulated fleet of WORKERS threads speaking the worker protocol over HTTP: claim, run epochs, report each,
obey the answer, complete. A member's "weights" (its accuracy) live in files: its checkpoint in the
assignment's checkpoint folder after every epoch, and at every interval's end a snapshot at
`snapshot_path(pbt.snapshot_dir, epoch)`, written before the report, which an exploiting member reads; so
the copy is real, and a member resumed after handing its worker over starts from its checkpoint with the
segment in force. PBT (population POPULATION, learning_rate mutable) and random search (POPULATION trials,
the same learning rate domain, held fixed) get the same epochs, over SEEDS seeds.

Checked after each sweep (a failure exits 1, never a missed target): it completed, every member trained
every epoch, every snapshot an exploit named existed when it was read, and a PBT sweep's snapshots were all
deleted by the server once it ended. `make bench` runs it after bench/search.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import API, SERVER_ENV, finish, free_port, wait_until_serving  # noqa: E402

from sweeper.messages import snapshot_path  # noqa: E402

POPULATION = 8
WORKERS = 4
"""Fewer workers than members: members take turns, as on a small fleet."""
EPOCHS = 40
STEPS = 5
"""Toy steps per epoch: 200 in all."""
INTERVAL = 2
SEEDS = 10
LEARNING_RATE = {"type": "real_interval", "min": 1.0e-4, "max": 2.0e-2}
"""Ray Tune's example draws the learning rate uniformly from [0.0001, 0.02]."""
TARGET_RATIO = 1.2
"""PBT's best final accuracy should beat random search's by this factor at the median over seeds."""

MIDPOINT = 100.0
Q_TOLERANCE = 3.0
NOISE = 2.0

SERVER_PLUGIN_ENV = {**SERVER_ENV, "PYTHONPATH": os.pathsep.join(
    filter(None, [str(ROOT), str(Path(__file__).parent), SERVER_ENV.get("PYTHONPATH")]))}


# -- the toy ---------------------------------------------------------------------------------------------


def optimal_learning_rate(accuracy: float) -> float:
    """A triangle: 0.001 at accuracy 0, 0.01 at MIDPOINT, 0.001 again at twice MIDPOINT."""
    rate = 0.01 * accuracy / MIDPOINT if accuracy < MIDPOINT else 0.01 - 0.01 * (accuracy - MIDPOINT) / MIDPOINT
    return min(0.01, max(0.001, rate))


def toy_step(accuracy: float, learning_rate: float, rng: random.Random) -> float:
    """One step of Ray Tune's pbt_function: progress shrinks with the ratio to the optimum, and a rate more than
    Q_TOLERANCE times too high loses ground."""
    optimum = optimal_learning_rate(accuracy)
    ratio = max(learning_rate, optimum) / min(learning_rate, optimum)
    if ratio < Q_TOLERANCE:
        accuracy += rng.random() / ratio
    elif learning_rate > optimum:
        accuracy -= (ratio - Q_TOLERANCE) * rng.random()
    accuracy += NOISE * rng.gauss(0.0, 1.0)
    return max(0.0, accuracy)


def best_fixed_rate(seed: int, points: int = 40) -> tuple[float, float]:
    """The best final accuracy a fixed learning rate reaches, over a grid of rates across the domain and the
    noise of each of the POPULATION members, computed in-process with no server, and that rate: what random
    search would reach had it drawn the best constant rate for its luckiest member."""
    best = (0.0, 0.0)
    for k in range(points):
        rate = LEARNING_RATE["min"] + (LEARNING_RATE["max"] - LEARNING_RATE["min"]) * k / (points - 1)
        for number in range(1, POPULATION + 1):
            accuracy = 0.0
            for epoch in range(EPOCHS):
                rng = random.Random(f"toy:{seed}:{number}:{epoch}")
                for _ in range(STEPS):
                    accuracy = toy_step(accuracy, rate, rng)
            best = max(best, (accuracy, rate))
    return best


# -- the server --------------------------------------------------------------------------------------------


@contextmanager
def server(work: Path) -> Iterator[str]:
    """This checkout's server, with the toy's model plugin, on a fresh SQLite file, until the block ends."""
    port = free_port()
    log_path = work / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--database-url", f"sqlite:///{work / 'sweeper.db'}", "--logdir", str(work / "runs"),
             "--plugins", "pbt_toy_model"],
            stdout=log, stderr=subprocess.STDOUT, env=SERVER_PLUGIN_ENV, cwd=ROOT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_serving(process, url, log_path)
            yield url
        finally:
            process.terminate()
            process.wait(15)


def spec(strategy: str, seed: int) -> dict[str, Any]:
    search: dict[str, Any] = {"strategy": "random", "max_trials": POPULATION, "seed": seed}
    if strategy == "pbt":
        search = {"strategy": "pbt", "population": POPULATION, "interval_epochs": INTERVAL,
                  "mutable": ["learning_rate"], "seed": seed}
    return {"name": f"toy-{strategy}-{seed}", "model": "pbt_toy", "dataset": "digits",
            "objective": {"metric": "val_accuracy", "goal": "maximize"},
            "hparams": {"learning_rate": LEARNING_RATE}, "search": search, "train": {"epochs": EPOCHS}}


# -- the simulated fleet -----------------------------------------------------------------------------------


@dataclass
class Run:
    """One sweep's run: what the fleet did and saw."""

    epochs_trained: int = 0
    exploits: int = 0
    hand_overs: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def write_once(path: Path, data: dict[str, Any]) -> None:
    """Atomically, and never over an existing file: a snapshot is immutable once written."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data))
    temporary.replace(path)


def in_force(segments: list[dict[str, Any]], epoch: int) -> dict[str, Any]:
    return [segment for segment in segments if segment["start_epoch"] <= epoch][-1]


def train_member(http: httpx.Client, worker_id: str, assignment: dict[str, Any], seed: int, run: Run) -> None:
    """Train a claimed member (or trial) from its checkpoint to the end, or until the server says otherwise."""
    trial_id, number, token = assignment["trial_id"], assignment["number"], assignment["lease_token"]
    body = {"worker_id": worker_id, "lease_token": token}
    checkpoint = Path(assignment["checkpoint_dir"]) / "state.json"
    state = json.loads(checkpoint.read_text()) if checkpoint.exists() else {"epoch": -1, "accuracy": 0.0}
    start, accuracy = state["epoch"] + 1, state["accuracy"]
    pbt = assignment.get("pbt")
    learning_rate = (in_force(pbt["segments"], start)["hparams"] if pbt else assignment["hparams"])["learning_rate"]
    for epoch in range(start, EPOCHS):
        rng = random.Random(f"toy:{seed}:{number}:{epoch}")
        for _ in range(STEPS):
            accuracy = toy_step(accuracy, learning_rate, rng)
        with run.lock:
            run.epochs_trained += 1
        if pbt and (epoch + 1) % INTERVAL == 0 and epoch < EPOCHS - 1:
            write_once(Path(snapshot_path(pbt["snapshot_dir"], epoch)), {"accuracy": accuracy})
        answer = http.post(f"/trials/{trial_id}/metrics", json={**body, "epoch": epoch,
                                                                "metrics": {"val_accuracy": accuracy}})
        if answer.status_code != 200:
            run.failures.append(f"trial {trial_id} epoch {epoch}: {answer.status_code} {answer.text}")
            return
        directive = answer.json()
        if directive["action"] == "exploit":
            snapshot = Path(directive["exploit"]["snapshot"])
            if not snapshot.exists():
                run.failures.append(f"trial {number} was told to copy {snapshot}, which is gone")
                return
            accuracy = json.loads(snapshot.read_text())["accuracy"]
            learning_rate = directive["exploit"]["segment"]["hparams"]["learning_rate"]
            with run.lock:
                run.exploits += 1
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text(json.dumps({"epoch": epoch, "accuracy": accuracy}))
        if directive["action"] == "stop":
            with run.lock:
                run.hand_overs += 1
            http.post(f"/trials/{trial_id}/release", json={**body, "reason": "hand over", "epochs_done": epoch + 1})
            return
        if directive["action"] not in ("continue", "exploit"):
            run.failures.append(f"trial {number}: unexpected answer {directive}")
            return
    done = http.post(f"/trials/{trial_id}/complete", json={**body, "metrics": {"val_accuracy": accuracy}})
    if done.status_code != 200:
        run.failures.append(f"trial {number} complete: {done.status_code} {done.text}")


def worker(url: str, worker_id: str, sweep_id: int, seed: int, run: Run) -> None:
    """Claim and train until the sweep has ended; a 204 while members wait for a hand-over is retried."""
    with httpx.Client(base_url=url + API, timeout=60) as http:
        while not run.failures:
            claim = http.post("/trials/claim", json={"worker_id": worker_id, "host": "bench"})
            if claim.status_code == 204:
                if http.get(f"/sweeps/{sweep_id}").json()["status"] != "running":
                    return
                time.sleep(0.02)
                continue
            if claim.status_code != 200:
                run.failures.append(f"claim: {claim.status_code} {claim.text}")
                return
            train_member(http, worker_id, claim.json(), seed, run)


def run_sweep(url: str, work: Path, strategy: str, seed: int) -> tuple[float, Run]:
    """One sweep through the fleet; its best final accuracy, and the run, audited."""
    run = Run()
    with httpx.Client(base_url=url + API, timeout=60) as http:
        sweep = http.post("/sweeps", json=spec(strategy, seed))
        assert sweep.status_code == 201, sweep.text
        sweep_id = sweep.json()["id"]
        threads = [threading.Thread(target=worker, args=(url, f"{strategy}-{seed}-{k}", sweep_id, seed, run))
                   for k in range(WORKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
        status = http.get(f"/sweeps/{sweep_id}").json()["status"]
        trials = http.get(f"/sweeps/{sweep_id}/trials", params={"limit": 100}).json()["data"]
    if status != "completed":
        run.failures.append(f"{strategy} seed {seed}: the sweep ended {status}")
    if run.epochs_trained != POPULATION * EPOCHS:
        run.failures.append(f"{strategy} seed {seed}: {run.epochs_trained} epochs trained, not {POPULATION * EPOCHS}")
    if strategy == "pbt" and (work / "runs" / str(sweep_id) / "pbt-snapshots").exists():
        run.failures.append(f"pbt seed {seed}: snapshots left after the sweep ended")
    finals = [trial["metrics"].get("val_accuracy") for trial in trials if trial["state"] == "completed"]
    return max((value for value in finals if value is not None), default=0.0), run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=SEEDS)
    args = parser.parse_args()
    console = Console(width=150)
    failures: list[str] = []
    table = Table(title=f"PBT (population {POPULATION}, learning_rate mutable every {INTERVAL} epochs) against random "
                        f"search ({POPULATION} trials), {EPOCHS} epochs each, {WORKERS} workers")
    for column in ("seed", "random: best accuracy", "PBT: best accuracy", "PBT / random",
                   "best fixed rate (grid x members, no server)", "exploits", "hand-overs", "epochs each",
                   "seconds (random, PBT)"):
        table.add_column(column, justify="right")
    ratios, randoms, pbts, fixeds = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="sweeper-bench-pbt-") as folder:
        work = Path(folder)
        with server(work) as url:
            for seed in range(args.seeds):
                started = time.perf_counter()
                random_best, random_run = run_sweep(url, work, "random", seed)
                middle = time.perf_counter()
                pbt_best, pbt_run = run_sweep(url, work, "pbt", seed)
                ended = time.perf_counter()
                failures += random_run.failures + pbt_run.failures
                ratio = pbt_best / random_best if random_best else float("inf")
                ratios.append(ratio)
                randoms.append(random_best)
                pbts.append(pbt_best)
                fixed, rate = best_fixed_rate(seed)
                fixeds.append(fixed)
                table.add_row(str(seed), f"{random_best:.1f}", f"{pbt_best:.1f}",
                              f"{ratio:.2f}x" if random_best else "random reached 0",
                              f"{fixed:.1f} (at {rate:.4f})", str(pbt_run.exploits),
                              str(pbt_run.hand_overs), f"{random_run.epochs_trained} / {pbt_run.epochs_trained}",
                              f"{middle - started:.1f} / {ended - middle:.1f}")
    median = statistics.median(ratios)
    table.add_row("median", f"{statistics.median(randoms):.1f}", f"{statistics.median(pbts):.1f}", f"{median:.2f}x",
                  f"{statistics.median(fixeds):.1f}", "", "", "", "")
    console.print(table)
    met = median >= TARGET_RATIO
    console.print(f"target: PBT's best at least {TARGET_RATIO}x random search's at the median: "
                  f"{'[green]met[/]' if met else '[red]missed[/]'} ({median:.2f}x)")
    finish(console, failures)


if __name__ == "__main__":
    main()
