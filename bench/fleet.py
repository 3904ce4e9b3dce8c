"""Benchmark: the ceiling of one server. How large a fleet one `sweeper serve` process on PostgreSQL
carries, and two processes sharing the database.

The fleet is simulated with cheap clients: one asyncio task per worker (not a process), each with its
own keep-alive HTTP connection (httpx, as `sweeper.client`; `--client wire` for bare asyncio streams that
leave the server more of the CPU), doing what a worker does, without training:

- claim a trial; train it for `--trial-seconds` (about a minute), reporting an epoch every
  `--epoch-seconds`, heartbeating every `--heartbeat-seconds` meanwhile; complete it; claim the next;
- the fleet joins as if it had been running for a while: every worker claims its first trial before the
  clock starts (32 claims at a time, not measured), and is put partway through it (a random share of it
  left, its epochs and heartbeats at random phases), so that trials end and claims come at a steady
  rate from the start. Only calls started in the `--step-seconds` after `--warmup-seconds` are measured.

For each number of server processes (`--servers 1 2`: started on one fresh PostgreSQL schema, the
workers spread over them round-robin) the fleet grows through `--sizes` (100, 250, 500, 1000 workers),
each step on a new sweep (the last one's is cancelled). Printed: the calls per second the servers
sustained (and what the fleet offered), p50/p99 latency of heartbeats, epoch reports, claims and
completes as the clients saw them, the CPU per call of the server processes and of the PostgreSQL
backends serving them (from /proc, where PostgreSQL runs on this machine), and the largest fleet at
which the p99 of heartbeats, reports and claims all stay under 100 ms. `--keep-logs` keeps the
servers' logs.

Time scales: the calls a worker makes per second are 1/heartbeat + 1/epoch + 2/trial, so a fleet of N
workers with every interval divided by k loads the server like N*k workers. `make bench` runs the
defaults; a test runs the same machinery with 5 workers and short intervals.

Needs PostgreSQL (`--database-url`, default the local `test` database). Exits 1 on a correctness failure
only, never on a missed target: an answer other than 200 (or 204 to a claim), once 503s and requests
on a connection the server had closed are sent again, as workers do.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import random
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

# Scripts in bench/ run with their folder on sys.path; said explicitly so that loading this file from
# elsewhere (a test, say) finds the shared helpers too.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import (API, CLIENTS, ServerProcess, finish, ms, percentile, process_cpu_seconds, run_async,  # noqa: E402
                    running_server)

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGET_P99_SECONDS = 0.100
MEASURED = ("heartbeat", "report", "claim")
"""The calls whose p99 decides whether a fleet is carried (complete is printed too)."""
KINDS = (*MEASURED, "complete")


@dataclass(frozen=True)
class Pace:
    """How often a simulated worker calls the server."""

    trial_seconds: float = 60.0
    epoch_seconds: float = 5.0
    heartbeat_seconds: float = 10.0

    def calls_per_second(self, workers: int) -> float:
        """What a fleet of `workers` offers the servers in a steady state."""
        return workers * (1 / self.heartbeat_seconds + 1 / self.epoch_seconds + 2 / self.trial_seconds)


@dataclass
class Step:
    """One fleet size against one set of servers: every measured call, and what went wrong."""

    servers: int
    workers: int
    seconds: float
    offered: float
    latencies: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    server_cpu_seconds: float | None = None
    database_cpu_seconds: float | None = None
    """PostgreSQL's backends for the servers' connections (None when PostgreSQL runs elsewhere)."""
    client_cpu_seconds: float = 0.0
    retries: int = 0
    reconnects: int = 0
    """Requests sent again because the server had closed their connection."""
    errors: list[str] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return sum(len(values) for values in self.latencies.values())

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def p99(self, kind: str) -> float:
        return percentile(self.latencies[kind], 0.99)

    @property
    def carried(self) -> bool:
        """Every measured kind was called, and its p99 stayed under the target."""
        return all(self.latencies[kind] and self.p99(kind) < TARGET_P99_SECONDS for kind in MEASURED)


# -- PostgreSQL: a schema of the run's own ---------------------------------------------------------------


@contextmanager
def fresh_schema(database_url: str) -> Iterator[str]:
    """A URL whose connections see only a new, empty schema of `database_url`'s database; dropped after."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    schema = f"sweeper_fleet_{uuid.uuid4().hex[:12]}"
    admin = create_engine(database_url)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        # The application name tells this run's database connections apart, for their CPU (database_cpu).
        url = make_url(database_url).update_query_dict({"options": f"-csearch_path={schema}",
                                                        "application_name": schema})
        try:
            yield url.render_as_string(hide_password=False)
        finally:
            with admin.begin() as connection:
                connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


def postgres_unavailable(database_url: str) -> str | None:
    """Why the benchmark cannot reach PostgreSQL at `database_url`, or None when it can."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'sweeper[postgres]')"
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    engine = create_engine(database_url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as error:
        return (f"no PostgreSQL server answers at {engine.url.render_as_string(hide_password=True)}: "
                f"{str(error.orig).splitlines()[0]}")
    finally:
        engine.dispose()
    return None


# -- the fleet ---------------------------------------------------------------------------------------------


def sweep_spec(name: str, trials: int) -> dict[str, Any]:
    return {"name": name, "model": "mlp", "dataset": "digits",
            "objective": {"metric": "val_accuracy", "goal": "maximize"},
            "hparams": {"units": {"type": "discrete", "values": [32, 64, 128, 256]},
                        "learning_rate": {"type": "real_interval", "min": 1e-4, "max": 1e-1, "log": True}},
            "search": {"strategy": "random", "max_trials": trials, "seed": 0},
            "train": {"epochs": 1000}}


ENROLLING_AT_ONCE = 32
"""Claims of the fleet's first trials in flight at once, before the clock starts (not measured)."""


class _Fleet:
    """The running simulation of one step: its measurement window, and its record."""

    def __init__(self, step: Step, pace: Pace, seed: int):
        self.step = step
        self.pace = pace
        self.random = random.Random(seed)
        self.window_start = math.inf

    def measured(self, started: float) -> bool:
        return self.window_start <= started < self.window_start + self.step.seconds

    async def call(self, http: Any, kind: str, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        """One call; its latency counts when it started inside the window; a 503 is retried."""
        while True:
            started = time.perf_counter()
            try:
                status, answer = await http.post(path, body)
            except (httpx.TransportError, asyncio.IncompleteReadError, ConnectionError):
                # The server closed the connection as the request went out (an idle one it timed out):
                # sent again on a new connection, as sweeper.client does.
                self.step.reconnects += 1
                continue
            elapsed = time.perf_counter() - started
            if status == 503:  # the database stayed busy past its timeout: retry, and count it
                self.step.retries += 1
                await asyncio.sleep(0.1)
                continue
            if self.measured(started):
                self.step.latencies[kind].append(elapsed)
            if status not in (200, 204) or (status == 204 and kind != "claim"):
                self.step.errors.append(f"{kind} {path}: {status} {answer[:200]!r}")
                raise _WorkerFailed
            return status, answer

    async def enrol(self, http: Any, worker_id: str, gate: asyncio.Semaphore) -> dict[str, Any]:
        """The worker's first trial, claimed before the clock starts."""
        async with gate:
            status, answer = await self.call(http, "claim", "/trials/claim", {"worker_id": worker_id, "host": "fleet"})
        if status != 200:
            self.step.errors.append(f"enrolling {worker_id}: {status}: the sweep has too few trials")
            raise _WorkerFailed
        return json.loads(answer)

    async def worker(self, http: Any, worker_id: str, assignment: dict[str, Any]) -> None:
        pace = self.pace
        # The fleet is joined as if it had been running for a while: the first trial is partway done (a random
        # share of it left, its epochs and heartbeats at a random phase), so trials end at a steady rate.
        seconds = self.random.uniform(0.0, 1.0) * pace.trial_seconds
        first_report = self.random.uniform(0.0, pace.epoch_seconds)
        try:
            while True:
                await self.train(http, worker_id, assignment, seconds, first_report)
                seconds, first_report = pace.trial_seconds, pace.epoch_seconds
                while True:
                    status, answer = await self.call(http, "claim", "/trials/claim",
                                                     {"worker_id": worker_id, "host": "fleet"})
                    if status == 200:
                        break
                    await asyncio.sleep(pace.heartbeat_seconds)
                assignment = json.loads(answer)
        except _WorkerFailed:
            return
        except Exception as error:  # a client that broke (a dropped connection): the worker would be gone
            self.step.errors.append(f"{worker_id}: {type(error).__name__}: {error}")

    async def train(self, http: Any, worker_id: str, assignment: dict[str, Any], seconds: float,
                    first_report: float) -> None:
        """Heartbeats and epoch reports for `seconds` (the first report after `first_report`), then complete."""
        trial, lease = assignment["trial_id"], {"worker_id": worker_id, "lease_token": assignment["lease_token"]}
        pace = self.pace
        clock = asyncio.get_running_loop().time
        start = clock()

        async def heartbeats() -> None:
            await asyncio.sleep(self.random.uniform(0, pace.heartbeat_seconds))
            while True:
                await self.call(http, "heartbeat", f"/trials/{trial}/heartbeat", lease)
                await asyncio.sleep(pace.heartbeat_seconds)

        beating = asyncio.create_task(heartbeats())
        try:
            at, epoch = first_report, 0
            while at < seconds:
                await asyncio.sleep(max(0.0, start + at - clock()))
                metrics = {"loss": 1.0 / (epoch + 1), "val_accuracy": min(0.99, 0.5 + 0.01 * epoch)}
                await self.call(http, "report", f"/trials/{trial}/metrics", {**lease, "epoch": epoch, "metrics": metrics})
                at, epoch = at + pace.epoch_seconds, epoch + 1
            await asyncio.sleep(max(0.0, start + seconds - clock()))
        finally:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)
        await self.call(http, "complete", f"/trials/{trial}/complete", {**lease, "metrics": {"val_accuracy": 0.9}})


class _WorkerFailed(Exception):
    """A call was refused: this simulated worker stops (the error is recorded)."""


@dataclass(frozen=True)
class _CpuMeter:
    """The CPU time of the server processes, and of PostgreSQL's backends that serve them."""

    servers: list[ServerProcess]
    database_url: str

    async def read(self) -> tuple[float | None, dict[int, float]]:
        return _cpu_seconds(self.servers), await asyncio.to_thread(database_cpu, self.database_url)


async def run_fleet(step: Step, urls: list[str], pace: Pace, warmup: float, client: str, meter: _CpuMeter,
                    seed: int = 0) -> None:
    """`step.workers` simulated workers, round-robin over `urls`: enrolled, warmed up, then measured."""
    fleet = _Fleet(step, pace, seed)
    https = [CLIENTS[client](urls[number % len(urls)]) for number in range(step.workers)]
    worker_ids = [f"fleet-{step.servers}x{step.workers}-{number}" for number in range(step.workers)]
    tasks: list[asyncio.Task[None]] = []
    try:
        gate = asyncio.Semaphore(ENROLLING_AT_ONCE)
        assignments = await asyncio.gather(*(fleet.enrol(http, worker_id, gate)
                                             for http, worker_id in zip(https, worker_ids)))
        gc.collect()
        gc.freeze()  # the load generator's own full collections would show as the server's latency
        fleet.window_start = time.perf_counter() + warmup
        tasks = [asyncio.create_task(fleet.worker(http, worker_id, assignment))
                 for http, worker_id, assignment in zip(https, worker_ids, assignments)]
        await asyncio.sleep(warmup)
        (server_before, database_before), cpu_started = await meter.read(), time.process_time()
        await asyncio.sleep(step.seconds)
        (server_after, database_after), step.client_cpu_seconds = await meter.read(), time.process_time() - cpu_started
        if server_before is not None and server_after is not None:
            step.server_cpu_seconds = server_after - server_before
        # Backends that lived through the whole window (a pooled connection normally does).
        lasting = database_before.keys() & database_after.keys()
        if lasting:
            step.database_cpu_seconds = sum(database_after[pid] - database_before[pid] for pid in lasting)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(http.aclose() for http in https), return_exceptions=True)
        gc.unfreeze()


def measure(database_url: str, servers: int, sizes: list[int], pace: Pace, *, warmup: float, seconds: float,
            client: str = "httpx", keep_logs: Path | None = None) -> list[Step]:
    """Start `servers` server processes on a fresh schema of `database_url`, and run each fleet size.

    The servers' logs go to a temporary folder, or to `keep_logs` (kept) when given."""
    steps = []
    with ExitStack() as stack:
        if keep_logs is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="sweeper-fleet-"))
        else:
            tmp = str(keep_logs / f"{servers}-servers")
            Path(tmp).mkdir(parents=True, exist_ok=True)
        url = stack.enter_context(fresh_schema(database_url))
        # One after another: the first creates the schema's tables, the next finds them.
        running: list[ServerProcess] = [stack.enter_context(running_server(Path(tmp), f"server-{number}", url))
                                        for number in range(servers)]
        meter = _CpuMeter(running, url)
        for size in sizes:
            step = Step(servers, size, seconds, pace.calls_per_second(size))
            trials = size * int(2 + (warmup + seconds) / pace.trial_seconds)
            with httpx.Client(base_url=running[0].url + API, timeout=60) as admin:
                sweep = admin.post("/sweeps", json=sweep_spec(f"fleet-{servers}x{size}", trials))
                sweep.raise_for_status()
                try:
                    run_async(run_fleet(step, [server.url for server in running], pace, warmup, client, meter))
                finally:
                    admin.post(f"/sweeps/{sweep.json()['id']}/cancel").raise_for_status()
            steps.append(step)
        if any(step.errors for step in steps):
            steps[-1].errors += [f"server log: {line}" for line in server_log_errors(Path(tmp))]
    return steps


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Timeout)\b.*")


def server_log_errors(work: Path) -> list[str]:
    """Each distinct exception line that the servers logged (their logs live in `work`), most frequent first."""
    lines = Counter(line.strip() for log in sorted(work.glob("*.log")) for line in log.read_text(errors="replace").splitlines()
                    if _EXCEPTION_LINE.match(line.strip()))
    return [f"{count} x {line[:300]}" for line, count in lines.most_common(5)]


def database_cpu(url: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend serving `url`'s connections (those with its
    application_name), where PostgreSQL runs on this machine; empty elsewhere."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = make_url(url).query["application_name"]
    engine = create_engine(make_url(url).difference_update_query(["application_name", "options"]))
    try:
        with engine.connect() as connection:
            pids = connection.execute(text("SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
                                      {"name": name}).scalars().all()
    finally:
        engine.dispose()
    return {pid: seconds for pid in pids if (seconds := process_cpu_seconds(pid)) is not None}


def _cpu_seconds(running: list[ServerProcess]) -> float | None:
    seconds = [server.cpu_seconds() for server in running]
    return None if any(value is None for value in seconds) else sum(seconds)  # type: ignore[arg-type]


# -- the report ----------------------------------------------------------------------------------------------


def steps_table(steps: list[Step], pace: Pace) -> Table:
    table = Table(title=f"A simulated fleet on PostgreSQL: trials of {pace.trial_seconds:g} s, an epoch report every "
                        f"{pace.epoch_seconds:g} s, a heartbeat every {pace.heartbeat_seconds:g} s")
    for column in ("servers", "workers", "offered calls/s", "sustained calls/s",
                   *(f"{kind} p50 / p99 ms" for kind in KINDS), "server CPU ms/call", "PostgreSQL CPU ms/call",
                   "clients' CPU ms/call", "503s retried", "reconnects",
                   f"p99 < {TARGET_P99_SECONDS * 1000:.0f} ms"):
        table.add_column(column, justify="right")
    for step in steps:
        table.add_row(
            str(step.servers), f"{step.workers:,}", f"{step.offered:.0f}", f"{step.rate:.0f}",
            *(f"{ms(percentile(step.latencies[kind], 0.5))} / {ms(step.p99(kind))}" for kind in KINDS),
            "-" if step.server_cpu_seconds is None or not step.calls else ms(step.server_cpu_seconds / step.calls),
            "-" if step.database_cpu_seconds is None or not step.calls else ms(step.database_cpu_seconds / step.calls),
            ms(step.client_cpu_seconds / step.calls) if step.calls else "-", str(step.retries),
            str(step.reconnects),
            "[green]yes[/]" if step.carried else "[red]no[/]")
    return table


def largest_carried(steps: list[Step], servers: int) -> int | None:
    """The largest fleet carried by `servers` processes, below which every smaller size was carried too."""
    largest = None
    for step in sorted((step for step in steps if step.servers == servers), key=lambda step: step.workers):
        if not step.carried:
            break
        largest = step.workers
    return largest


def ceiling_table(steps: list[Step]) -> Table:
    """Side by side: each fleet size's worst p99 on one server and on more, and their ratio."""
    counts = sorted({step.servers for step in steps})
    table = Table(title="Worst p99 of heartbeat, report and claim (ms), by server processes")
    table.add_column("workers", justify="right")
    for count in counts:
        table.add_column(f"{count} server{'s' if count > 1 else ''}", justify="right")
    if len(counts) > 1:
        table.add_column(f"ratio {counts[-1]} / {counts[0]}", justify="right")
    by_key = {(step.servers, step.workers): step for step in steps}
    for size in sorted({step.workers for step in steps}):
        worst = [max((by_key[count, size].p99(kind) for kind in MEASURED), default=float("nan"))
                 if (count, size) in by_key else float("nan") for count in counts]
        row = [f"{size:,}", *(ms(value) for value in worst)]
        if len(counts) > 1:
            row.append(f"{worst[-1] / worst[0]:.2f}" if worst[0] else "-")
        table.add_row(*row)
    table.caption = "largest fleet with every p99 under {:.0f} ms: {}".format(
        TARGET_P99_SECONDS * 1000, "; ".join(f"{count} server(s): {largest_carried(steps, count) or 'none measured'}"
                                             for count in counts))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("SWEEPER_BENCH_POSTGRES_URL", DEFAULT_DATABASE_URL),
                        help="PostgreSQL to run on: a fresh schema of its database is made and dropped")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 250, 500, 1000], help="fleet sizes, in order")
    parser.add_argument("--servers", type=int, nargs="+", default=[1, 2], help="server processes, one run each")
    parser.add_argument("--trial-seconds", type=float, default=60.0)
    parser.add_argument("--epoch-seconds", type=float, default=5.0)
    parser.add_argument("--heartbeat-seconds", type=float, default=10.0)
    parser.add_argument("--warmup-seconds", type=float, default=5.0, help="after the clock starts, not measured")
    parser.add_argument("--step-seconds", type=float, default=20.0, help="the measured window of each fleet size")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="httpx",
                        help="httpx (what workers use), or wire, a bare asyncio client that leaves the server the CPU")
    parser.add_argument("--keep-logs", type=Path, default=None, metavar="FOLDER",
                        help="keep the servers' logs in FOLDER/<N>-servers/ (default: a temporary folder)")
    args = parser.parse_args()

    console = Console(width=200)  # the steps' table is wide; a file keeps it whole
    reason = postgres_unavailable(args.database_url)
    if reason is not None:
        raise SystemExit(f"bench/fleet.py needs PostgreSQL: {reason} (--database-url)")
    console.print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                  f"load average {os.getloadavg()[0]:.2f} at start")
    pace = Pace(args.trial_seconds, args.epoch_seconds, args.heartbeat_seconds)
    steps: list[Step] = []
    for servers in args.servers:
        steps += measure(args.database_url, servers, args.sizes, pace, warmup=args.warmup_seconds,
                         seconds=args.step_seconds, client=args.client, keep_logs=args.keep_logs)
        console.print(f"{servers} server(s) measured; load average {os.getloadavg()[0]:.2f}")
    console.print(steps_table(steps, pace))
    console.print(ceiling_table(steps))
    finish(console, [f"{step.servers} server(s), {step.workers} workers: {error}"
                     for step in steps for error in step.errors[:5] + [e for e in step.errors if e.startswith("server log")]])


if __name__ == "__main__":
    main()
