"""Benchmark: what the service costs over a hand-written loop, and how long a worker idles between trials.

Three ways to train the same trials (bench/spec.yaml: 20 trials of about 5 s on a laptop CPU), each a
whole command timed from start to end, run one after another in this one invocation:

- bare loop: bench/bare_loop.py, the HParams tutorial's loop in one process (the baseline);
- sweeper run: the server and one CPU worker process, the sweep submitted over HTTP;
- new process per trial: bench/bare_loop.py --only k for each trial, paying the start-up every time.

Then the gap: in a worker (in this process, against a server in a thread), the time from one trial's
last training batch to the next trial's first, which holds the report, the next claim, the model's
build and compile and the first step's tracing. Prints a table; `make bench` runs it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

BENCH = Path(__file__).resolve().parent
SPEC = BENCH / "spec.yaml"
BIN = Path(sys.executable).parent
QUIET = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, env=QUIET, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def bare_loop(spec: Path, work: Path) -> float:
    return timed([sys.executable, str(BENCH / "bare_loop.py"), str(spec), "--logdir", str(work / "bare")])


def service(spec: Path, work: Path) -> float:
    return timed([str(BIN / "sweeper"), "run", str(spec), "--database-url", f"sqlite:///{work / 'service.db'}",
                  "--logdir", str(work / "service"), "--cpu-workers", "1"])


def process_per_trial(spec: Path, work: Path, trials: int) -> float:
    return sum(timed([sys.executable, str(BENCH / "bare_loop.py"), str(spec), "--logdir", str(work / "cold"),
                      "--only", str(index)]) for index in range(trials))


@dataclass
class BatchClock:
    """Wall times of a trial's first and last training batch, filled by a Keras callback."""

    first: float | None = None
    last: float | None = None
    times: list[float] = field(default_factory=list)


def worker_gaps(spec_path: Path, work: Path) -> list[float]:
    """Gaps (s) between consecutive trials' last and first batches in one worker, in this process."""
    import keras

    from api.server import start_in_thread
    from api.settings import Settings
    from sweeper import load_spec
    from sweeper.client import Client
    from sweeper.training import runner
    from workers.agent import Agent

    class Clock(keras.callbacks.Callback):
        def __init__(self, clock: BatchClock):
            super().__init__()
            self.clock = clock

        def on_train_batch_begin(self, batch: int, logs: object = None) -> None:
            if self.clock.first is None:
                self.clock.first = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: object = None) -> None:
            self.clock.last = time.perf_counter()

    clocks: list[BatchClock] = []

    def run_trial(assignment, on_epoch_end, **options):  # noqa: ANN001, ANN003, ANN202 - the agent's trainer
        clocks.append(BatchClock())
        return runner.run_trial(assignment, on_epoch_end, callbacks=[Clock(clocks[-1])], **options)

    server = start_in_thread(Settings(host="127.0.0.1", port=0, database_url=f"sqlite:///{work / 'gaps.db'}",
                                      logdir=str(work / "gaps")))
    try:
        with Client(server.url) as client:
            client.create_sweep(load_spec(spec_path).to_json())
            Agent(client, worker_id="bench", host="bench", poll_interval=0.2, idle_exit=1.0,
                  run_trial=run_trial).run()
    finally:
        server.stop()
    return [b.first - a.last for a, b in zip(clocks, clocks[1:]) if a.last is not None and b.first is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--skip-cold", action="store_true", help="leave out the process-per-trial run")
    parser.add_argument("--gaps-only", action="store_true", help="only measure the gap between trials in a worker")
    args = parser.parse_args()

    from sweeper import load_spec, make_strategy

    trials = make_strategy(load_spec(args.spec)).total
    console = Console()
    console.print(f"{trials} trials of {args.spec.name} on {platform.machine()}, {os.cpu_count()} CPUs, "
                  f"Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="sweeper-bench-") as tmp:
        work = Path(tmp)
        walls: dict[str, float] = {}
        if not args.gaps_only:
            walls["bare loop (one process)"] = bare_loop(args.spec, work)
            walls["sweeper run (server + 1 worker)"] = service(args.spec, work)
            if not args.skip_cold:
                walls["new process per trial"] = process_per_trial(args.spec, work, trials)
        gaps = worker_gaps(args.spec, work)

    if walls:
        base = walls["bare loop (one process)"]
        table = Table(title="Same trials, three ways (wall time of the whole command)")
        for column in ("mode", "wall s", "per trial s", "ratio to bare loop"):
            table.add_column(column, justify="right" if column != "mode" else "left")
        for mode, wall in walls.items():
            table.add_row(mode, f"{wall:.1f}", f"{wall / trials:.2f}", f"{wall / base:.3f}")
        console.print(table)
    if len(gaps) < 1:
        raise SystemExit("no gaps measured: the worker ran fewer than two trials (see its log above)")
    gap_table = Table(title="Gap in a worker: last batch of one trial to first batch of the next")
    for column in ("trials", "median s", "p90 s", "max s"):
        gap_table.add_column(column, justify="right")
    ordered = sorted(gaps)
    gap_table.add_row(str(len(gaps) + 1), f"{statistics.median(gaps):.3f}",
                      f"{ordered[int(0.9 * (len(ordered) - 1))]:.3f}", f"{ordered[-1]:.3f}")
    console.print(gap_table)
    console.print("targets: sweeper run / bare loop <= 1.05; median gap <= 0.3 s")


if __name__ == "__main__":
    main()
