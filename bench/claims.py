"""Benchmark: how fast workers claim trials, against Optuna's SQLite storage on the same machine.

Run one after another in this one invocation:

- sweeper: a real server process (`sweeper serve`, SQLite in a temporary folder, no tokens) and 64
  concurrent HTTP clients, each its own worker id, each looping claim -> complete (a trivial metric)
  until a sweep of 3,000 no-op trials is drained. Twice, each on a fresh server: with httpx clients
  (the issue's set-up, what workers use), then with bare asyncio clients that cost the machine next to
  no CPU, which shows what the server does when the load generator does not share its cores;
- Optuna: 64 processes doing ask/tell on one study in `sqlite:///` storage until as many trials are
  told. Its "database is locked" errors are retried and counted (a failed ask may leave a trial behind,
  also counted);
- claim latency (500 sequential claims, each completed) with 1,000 versus 100,000 finished trials of
  the same sweep in the database, the rows inserted directly for speed.

Claim latency is measured by the client, from sending the request to reading the answer. After the
run, the database says whether any trial was handed out twice (its attempts counted two claims) or
any configuration skipped. Exits 1 on such a correctness failure only, never on a missed target.
`make bench` runs it after bench/overhead.py.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
from rich.console import Console
from rich.table import Table

T = TypeVar("T")
BIN = Path(sys.executable).parent
API = "/api/v1"
# The server runs as `sweeper serve` with its defaults: no SWEEPER_* setting (a token, say) leaks in.
SERVER_ENV = {**{name: value for name, value in os.environ.items() if not name.startswith("SWEEPER_")},
              "PYTHONWARNINGS": "ignore"}

TARGET_CLAIMS_PER_SECOND = 500.0
TARGET_P99_SECONDS = 0.050
TARGET_RATIO_TO_OPTUNA = 10.0
TARGET_SIZE_RATIO = 1.5

# Both sides search the same space: the README's digits sweep without its schedule.
UNITS = [32, 64, 128, 256]
OPTIMIZERS = ["adam", "sgd"]


def sweep_spec(trials: int) -> dict[str, Any]:
    return {
        "name": f"claims-{trials}",
        "model": "mlp",
        "dataset": "digits",
        "objective": {"metric": "val_accuracy", "goal": "maximize"},
        "hparams": {
            "units": {"type": "discrete", "values": UNITS},
            "dropout": {"type": "real_interval", "min": 0.0, "max": 0.5},
            "learning_rate": {"type": "real_interval", "min": 1e-4, "max": 1e-1, "log": True},
            "optimizer": {"type": "discrete", "values": OPTIMIZERS},
        },
        "search": {"strategy": "random", "max_trials": trials, "seed": 0},
        "train": {"epochs": 1},
    }


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (share in 0..1) of `values`; NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


# -- the sweeper server, a real process ------------------------------------------------------------------


@dataclass(frozen=True)
class ServerProcess:
    url: str
    database: Path
    """Its SQLite file (none there when it was given another database URL)."""
    pid: int

    def cpu_seconds(self) -> float | None:
        """User + system CPU the server process has used so far (Linux only; None elsewhere)."""
        return process_cpu_seconds(self.pid)


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of process `pid` so far (Linux only; None where /proc cannot tell)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(process: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float = 60) -> None:
    """Return once the server at `url` answers /healthz; SystemExit with its log's end if it exits or takes
    longer than `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the server did not start within {timeout:.0f} s:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.1)


@contextmanager
def running_server(work: Path, name: str, database_url: str | None = None) -> Iterator[ServerProcess]:
    """`sweeper serve` on a fresh SQLite file under `work` (or on `database_url`), until the block ends."""
    database = work / f"{name}.db"
    port = free_port()
    log_path = work / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(BIN / "sweeper"), "serve", "--host", "127.0.0.1", "--port", str(port),
             "--database-url", database_url or f"sqlite:///{database}", "--logdir", str(work / name / "runs")],
            stdout=log, stderr=subprocess.STDOUT, env=SERVER_ENV)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_serving(process, url, log_path)
            yield ServerProcess(url, database, process.pid)
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def create_sweep(url: str, trials: int) -> int:
    answer = httpx.post(f"{url}{API}/sweeps", json=sweep_spec(trials), timeout=60)
    answer.raise_for_status()
    return int(answer.json()["id"])


# -- sweeper: 64 concurrent workers drain one sweep --------------------------------------------------------


@dataclass
class Side:
    """One side's run: how many trials in how long, and what went wrong."""

    name: str
    trials: int
    seconds: float
    latencies: list[float]
    """Client-measured seconds of each claim (Optuna: each ask) that got a trial, retries included."""
    retries: int
    """503s (sweeper) or "database is locked" errors (Optuna) that were retried."""
    handed_twice: int
    problems: list[str] = field(default_factory=list)
    """Correctness failures: trials handed out twice, configurations skipped, reports refused."""
    notes: list[str] = field(default_factory=list)
    server_cpu_seconds: float | None = None
    """CPU the server process used during the run (sweeper only)."""
    client_cpu_seconds: float | None = None

    @property
    def rate(self) -> float:
        return self.trials / self.seconds


class HttpxClient:
    """One worker's connection through httpx, what `sweeper.client` uses."""

    def __init__(self, url: str):
        # Plain HTTP: no TLS context to build (loading the CA bundle 64 times takes seconds here).
        self._http = httpx.AsyncClient(base_url=url + API, timeout=120, verify=False,
                                       limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        answer = await self._http.post(path, json=body)
        return answer.status_code, answer.content

    async def aclose(self) -> None:
        await self._http.aclose()


class WireClient:
    """One worker's keep-alive HTTP/1.1 connection on bare asyncio streams: the requests this benchmark
    sends and the answers the server gives (a Content-Length body or none), nothing more.

    A load generator that costs next to nothing, so that the server has the machine's CPU: on a small
    machine httpx takes more CPU per request than the server does (see bench/RESULTS.md).
    """

    def __init__(self, url: str):
        parts = httpx.URL(url)
        self._host, self._port = parts.host, parts.port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._one_at_a_time = asyncio.Lock()

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        # One request at a time on the connection, as httpx's pool of one does (a worker's heartbeat may
        # come while its report is out).
        async with self._one_at_a_time:
            return await self._post(path, body)

    async def _post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self._host, self._port)
        reader, writer = self._streams
        data = json.dumps(body).encode()
        try:
            writer.write(b"POST %s%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (API.encode(), path.encode(), self._host.encode(), len(data), data))
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *headers = head.decode("latin-1").split("\r\n")
            length = 0
            for header in headers:
                name, _, value = header.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "transfer-encoding":
                    raise RuntimeError(f"the wire client reads Content-Length bodies only, but got {header!r}")
            return int(status_line.split()[1]), await reader.readexactly(length) if length else b""
        except BaseException:
            # The server closed the idle connection, or this call was cancelled (a worker's heartbeat when its
            # trial ends) with its answer still to come: the next request opens a new connection, so it cannot
            # read that answer as its own.
            writer.close()
            self._streams = None
            raise

    async def aclose(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            await self._streams[1].wait_closed()


CLIENTS = {"httpx": HttpxClient, "wire": WireClient}


@dataclass(frozen=True)
class Drained:
    seconds: float
    client_cpu_seconds: float
    """CPU the clients (this process) used meanwhile: on a small machine they compete with the server."""
    latencies: list[float]
    handed: list[int]
    """The trial of each assignment, in order."""
    retries: int
    errors: list[str]


async def drain(url: str, clients: int, kind: str = "httpx") -> Drained:
    """Claim and complete until every client is told there is no work; each claim's latency and trial."""
    latencies: list[float] = []
    handed: list[int] = []
    errors: list[str] = []
    retries = 0

    async def worker(http: HttpxClient | WireClient, worker_id: str) -> None:
        nonlocal retries
        claim = {"worker_id": worker_id, "host": "bench"}
        while True:
            started = time.perf_counter()
            status, answer = await http.post("/trials/claim", claim)
            elapsed = time.perf_counter() - started
            if status == 204:
                return
            if status == 503:  # the database stayed busy past its timeout: retry, and count it
                retries += 1
                continue
            if status != 200:
                errors.append(f"claim by {worker_id}: {status} {answer[:200]!r}")
                return
            assignment = json.loads(answer)
            trial_id = assignment["trial_id"]
            latencies.append(elapsed)
            handed.append(trial_id)
            done = {"worker_id": worker_id, "lease_token": assignment["lease_token"], "metrics": {"val_accuracy": 0.5}}
            status, answer = await http.post(f"/trials/{trial_id}/complete", done)
            if status != 200:
                errors.append(f"complete {trial_id} by {worker_id}: {status} {answer[:200]!r}")
                return

    https = [CLIENTS[kind](url) for _ in range(clients)]
    # The load generator's own full collections would show as claim latency: what it keeps is frozen.
    gc.collect()
    gc.freeze()
    try:
        started = time.perf_counter()
        cpu_started = time.process_time()
        await asyncio.gather(*(worker(http, f"bench-{number}") for number, http in enumerate(https)))
        seconds = time.perf_counter() - started
        client_cpu = time.process_time() - cpu_started
    finally:
        await asyncio.gather(*(http.aclose() for http in https))
    return Drained(seconds, client_cpu, latencies, handed, retries, errors)


def run_async(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` on uvloop where it is installed (the server's loop too): the clients then take less of
    the CPU that they share with the server."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(work)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(work)


def audit_sweep(database: Path, sweep_id: int, trials: int) -> tuple[int, list[str]]:
    """From the database: trials claimed more than once, and every other way the sweep went wrong."""
    with sqlite3.connect(database) as connection:
        rows, twice, unfinished, indexes, first, last = connection.execute(
            "SELECT COUNT(*), SUM(attempts <> 1), SUM(state <> 'completed'), COUNT(DISTINCT \"index\"), "
            "MIN(\"index\"), MAX(\"index\") FROM trials WHERE sweep_id = ?", (sweep_id,)).fetchone()
        status, next_index = connection.execute(
            "SELECT status, next_index FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
    problems = []
    if twice:
        problems.append(f"{twice} trial(s) claimed more than once (attempts > 1)")
    if (rows, indexes, first, last, next_index) != (trials, trials, 0, trials - 1, trials):
        problems.append(f"configurations skipped or repeated: {rows} rows, {indexes} distinct indexes "
                        f"{first}..{last}, next_index {next_index}, for {trials} trials")
    if unfinished or status != "completed":
        problems.append(f"{unfinished} trial(s) not completed; sweep {status}")
    return int(twice or 0), problems


def sweeper_side(work: Path, trials: int, clients: int, kind: str) -> Side:
    with running_server(work, f"claims-{kind}") as server:
        sweep_id = create_sweep(server.url, trials)
        cpu_before = server.cpu_seconds()
        drained = run_async(drain(server.url, clients, kind))
        cpu_after = server.cpu_seconds()
    twice, problems = audit_sweep(server.database, sweep_id, trials)
    duplicates = sum(count - 1 for count in Counter(drained.handed).values() if count > 1)
    if duplicates:
        problems.append(f"{duplicates} assignment(s) of a trial the clients had already been given")
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return Side(f"sweeper, {kind} clients", len(drained.handed), drained.seconds, drained.latencies, drained.retries,
                max(twice, duplicates), problems + drained.errors, server_cpu_seconds=cpu,
                client_cpu_seconds=drained.client_cpu_seconds)


# -- Optuna: 64 processes ask and tell on one SQLite study --------------------------------------------------


def _is_locked(error: BaseException | None) -> bool:
    """Whether "database is locked" is the error or any error it was raised from."""
    while error is not None:
        if "database is locked" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _optuna_distributions() -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    return {"units": CategoricalDistribution(UNITS), "dropout": FloatDistribution(0.0, 0.5),
            "learning_rate": FloatDistribution(1e-4, 1e-1, log=True),
            "optimizer": CategoricalDistribution(OPTIMIZERS)}


def optuna_process(storage: str, study_name: str, seed: int, tickets: Any, total: int, start: Any,
                   results: Any) -> None:
    """One Optuna worker: take a ticket, ask (the claim), tell a trivial value; until all tickets are taken."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=storage,
                              sampler=optuna.samplers.RandomSampler(seed=seed))
    distributions = _optuna_distributions()
    latencies: list[float] = []
    retries = 0
    start.wait()
    while True:
        with tickets.get_lock():
            if tickets.value >= total:
                break
            tickets.value += 1
        started = time.perf_counter()
        while True:
            try:
                trial = study.ask(distributions)
                break
            except Exception as error:
                if not _is_locked(error):
                    raise
                retries += 1
        latencies.append(time.perf_counter() - started)
        while True:
            try:
                study.tell(trial, 0.5)
                break
            except Exception as error:
                if not _is_locked(error):
                    raise
                retries += 1
    results.put((latencies, retries, time.perf_counter()))


def optuna_side(work: Path, trials: int, processes: int, timeout: float) -> Side:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    database = work / "optuna.db"
    storage = f"sqlite:///{database}"
    optuna.create_study(study_name="claims", storage=storage, direction="maximize")
    # Forked where possible: 64 spawned interpreters importing Optuna would take the CPU for a minute.
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    tickets = context.Value("q", 0)
    start = context.Barrier(processes + 1)
    results = context.Queue()
    workers = [context.Process(target=optuna_process, args=(storage, "claims", seed, tickets, trials, start, results),
                               daemon=True) for seed in range(processes)]
    for worker in workers:
        worker.start()
    start.wait(timeout=300)
    started = time.perf_counter()
    latencies: list[float] = []
    retries = 0
    ended = started
    notes: list[str] = []
    for _ in workers:
        try:
            worker_latencies, worker_retries, worker_ended = results.get(timeout=timeout)
        except Exception:
            notes.append(f"stopped after {timeout:.0f} s with Optuna processes still working")
            break
        latencies += worker_latencies
        retries += worker_retries
        ended = max(ended, worker_ended)
    for worker in workers:
        worker.join(5)
        if worker.is_alive():
            worker.kill()
    problems = [f"an Optuna process exited with {worker.exitcode}" for worker in workers if worker.exitcode not in (0, -9)]
    with sqlite3.connect(database) as connection:
        told = connection.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
        left_running = connection.execute("SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
        numbered_twice = connection.execute(
            "SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM trials GROUP BY study_id, number "
            "HAVING n > 1)").fetchone()[0]
    if left_running:
        notes.append(f"{left_running} Optuna trial(s) left running by an ask that failed half way and was retried")
    return Side(f"Optuna {optuna.__version__}, SQLite", told, ended - started, latencies, retries, numbered_twice,
                problems, notes)


# -- claim latency against the number of finished trials ----------------------------------------------------


def insert_finished_trials(database: Path, sweep_id: int, count: int) -> None:
    """`count` completed trials of the sweep, written straight into its database (the API would take minutes)."""
    stamp = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    metrics = json.dumps({"val_accuracy": 0.5})

    def rows() -> Iterator[tuple[Any, ...]]:
        for index in range(count):
            hparams = json.dumps({"units": UNITS[index % len(UNITS)], "dropout": (index % 50) / 100,
                                  "learning_rate": 1e-3, "optimizer": OPTIMIZERS[index % 2]})
            yield (sweep_id, index, "completed", hparams, metrics, 1, f"bench-{index % 64}", stamp, stamp, stamp)

    with sqlite3.connect(database, timeout=60) as connection:
        connection.executemany(
            "INSERT INTO trials (sweep_id, \"index\", state, hparams, metrics, attempts, worker_id, created_at, "
            "started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows())
        connection.execute("UPDATE sweeps SET next_index = ? WHERE id = ?", (count, sweep_id))


def latency_with_finished(work: Path, finished: int, claims: int, warmup: int = 20) -> list[float]:
    """Seconds of each of `claims` sequential claims (each then completed) with `finished` trials already done."""
    with running_server(work, f"finished-{finished}") as server:
        sweep_id = create_sweep(server.url, finished + warmup + claims)
        insert_finished_trials(server.database, sweep_id, finished)
        latencies: list[float] = []
        with httpx.Client(base_url=server.url + API, timeout=60) as http:
            for number in range(warmup + claims):
                started = time.perf_counter()
                answer = http.post("/trials/claim", json={"worker_id": "solo", "host": "bench"})
                elapsed = time.perf_counter() - started
                answer.raise_for_status()
                assignment = answer.json()
                http.post(f"/trials/{assignment['trial_id']}/complete",
                          json={"worker_id": "solo", "lease_token": assignment["lease_token"],
                                "metrics": {"val_accuracy": 0.5}}).raise_for_status()
                if number >= warmup:
                    latencies.append(elapsed)
    return latencies


# -- the report -----------------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def verdict(met: bool) -> str:
    return "[green]met[/]" if met else "[red]not met[/]"


def throughput_table(sides: list[Side], clients: int) -> Table:
    table = Table(title=f"Claim throughput: {clients} concurrent workers claim and complete no-op trials")
    table.add_column("")
    for side in sides:
        table.add_column(side.name, justify="right")
    optuna = next((side for side in sides if side.name.startswith("Optuna")), None)

    def row(label: str, value: Callable[[Side], str]) -> None:
        table.add_row(label, *(value(side) for side in sides))

    row("trials", lambda side: str(side.trials))
    row("seconds", lambda side: f"{side.seconds:.1f}")
    row("claims/s", lambda side: f"{side.rate:.1f}")
    if optuna is not None:
        row("ratio to Optuna", lambda side: f"{side.rate / optuna.rate:.1f}")
    row("claim latency p50 ms", lambda side: ms(percentile(side.latencies, 0.5)))
    row("claim latency p99 ms", lambda side: ms(percentile(side.latencies, 0.99)))
    row("trials handed out twice", lambda side: str(side.handed_twice))
    row("retries (503 / database is locked)", lambda side: str(side.retries))
    row("server CPU ms per claim + complete",
        lambda side: "-" if side.server_cpu_seconds is None else ms(side.server_cpu_seconds / side.trials))
    row("clients' CPU ms per claim + complete",
        lambda side: "-" if side.client_cpu_seconds is None else ms(side.client_cpu_seconds / side.trials))
    return table


def targets_table(sides: list[Side]) -> Table:
    """The issue's targets for the sweeper sides (the httpx run is the issue's set-up)."""
    table = Table(title="Targets")
    table.add_column("target")
    ours = [side for side in sides if side.name.startswith("sweeper")]
    for side in ours:
        table.add_column(side.name, justify="right")
    optuna = next((side for side in sides if side.name.startswith("Optuna")), None)
    table.add_row(f">= {TARGET_CLAIMS_PER_SECOND:.0f} claims/s",
                  *(verdict(side.rate >= TARGET_CLAIMS_PER_SECOND) for side in ours))
    table.add_row(f"p99 claim latency < {TARGET_P99_SECONDS * 1000:.0f} ms",
                  *(verdict(percentile(side.latencies, 0.99) < TARGET_P99_SECONDS) for side in ours))
    if optuna is not None:
        table.add_row(f">= {TARGET_RATIO_TO_OPTUNA:.0f} times Optuna's rate",
                      *(verdict(side.rate >= TARGET_RATIO_TO_OPTUNA * optuna.rate) for side in ours))
    table.add_row("no trial handed out twice", *(verdict(side.handed_twice == 0) for side in ours))
    return table


def size_table(latencies: dict[int, list[float]]) -> Table:
    table = Table(title="Claim latency, sequential claims, by finished trials in the database")
    for column in ("finished trials", "claims", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right")
    for finished, values in latencies.items():
        table.add_row(f"{finished:,}", str(len(values)), ms(percentile(values, 0.5)), ms(percentile(values, 0.99)))
    if len(latencies) == 2:
        (_, small), (_, large) = latencies.items()
        p50_ratio = percentile(large, 0.5) / percentile(small, 0.5)
        p99_ratio = percentile(large, 0.99) / percentile(small, 0.99)
        table.add_row("ratio", "", f"{p50_ratio:.2f}", f"{p99_ratio:.2f}")
        table.caption = (f"target: at most {TARGET_SIZE_RATIO} times slower: p50 "
                         f"{verdict(p50_ratio <= TARGET_SIZE_RATIO)}, p99 {verdict(p99_ratio <= TARGET_SIZE_RATIO)}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3000, help="trials in the drained sweep (and told to Optuna)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent workers on each side")
    parser.add_argument("--client", choices=sorted(CLIENTS), nargs="+", default=["httpx", "wire"],
                        help="the sweeper side's HTTP clients: httpx (the issue's set-up), and wire, a bare asyncio "
                             "client that leaves the server the CPU")
    parser.add_argument("--skip-optuna", action="store_true", help="leave out the Optuna side")
    parser.add_argument("--optuna-timeout", type=float, default=900, help="seconds before Optuna's run is cut")
    parser.add_argument("--latency-claims", type=int, default=500, help="sequential claims per database size")
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000, 100_000],
                        help="finished trials in the database for the latency comparison (none: skip it)")
    args = parser.parse_args()

    console = Console()
    console.print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                  f"load average {os.getloadavg()[0]:.2f} at start")
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sweeper-claims-") as tmp:
        work = Path(tmp)
        sides = [sweeper_side(work, args.trials, args.clients, kind) for kind in args.client]
        failures += [f"{side.name}: {problem}" for side in sides for problem in side.problems]
        if not args.skip_optuna:
            optuna = optuna_side(work, args.trials, args.clients, args.optuna_timeout)
            sides.append(optuna)
            for note in optuna.notes + optuna.problems:
                console.print(f"{optuna.name}: {note}")
        console.print(throughput_table(sides, args.clients))
        console.print(targets_table(sides))
        if args.sizes:
            by_size = {size: latency_with_finished(work, size, args.latency_claims) for size in args.sizes}
            console.print(size_table(by_size))
    finish(console, failures)


def finish(console: Console, failures: list[str]) -> None:
    """The machine's load at the end, then each correctness failure; exit 1 if there was any (never for a
    missed target)."""
    console.print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if failures:
        for failure in failures:
            console.print(f"[red]correctness failure[/] {failure}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
