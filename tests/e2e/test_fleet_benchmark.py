"""bench/fleet.py's machinery at a tiny size (5 simulated workers, seconds), so that it cannot rot: a real
`sweeper serve` on a fresh PostgreSQL schema, every kind of call measured, the schema dropped after."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from postgres_testing import require_postgres, server_url
from rich.console import Console

BENCHMARK = Path(__file__).resolve().parents[2] / "bench" / "fleet.py"


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleet_benchmark", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _fleet_schemas() -> set[str]:
    from sqlalchemy import create_engine, text

    engine = create_engine(server_url())
    try:
        with engine.connect() as connection:
            return set(connection.execute(text(
                "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'sweeper_fleet_%'")).scalars())
    finally:
        engine.dispose()


@pytest.mark.e2e
def test_a_tiny_fleet_on_one_server_is_measured_call_by_call_and_leaves_no_schema_behind() -> None:
    require_postgres()
    fleet = load_benchmark()
    before = _fleet_schemas()

    (step,) = fleet.measure(server_url(), 1, [5], fleet.Pace(trial_seconds=2, epoch_seconds=0.5, heartbeat_seconds=1),
                            warmup=1.5, seconds=3)

    assert step.errors == [] and step.servers == 1 and step.workers == 5
    for kind in fleet.KINDS:
        assert step.latencies[kind], f"no {kind} call was measured"
        assert all(0 < latency < 30 for latency in step.latencies[kind])
    # Each worker heartbeats about once a second over the 3 s window.
    assert 5 <= len(step.latencies["heartbeat"]) <= 25
    assert step.rate > 0 and step.server_cpu_seconds is not None and step.server_cpu_seconds > 0
    assert fleet.largest_carried([step], 1) == (5 if step.carried else None)
    console = Console(width=200, record=True)
    console.print(fleet.steps_table([step], fleet.Pace()))
    console.print(fleet.ceiling_table([step]))
    assert "largest fleet with every p99 under 100 ms: 1 server(s):" in " ".join(console.export_text().split())
    assert _fleet_schemas() <= before


def _step(fleet: ModuleType, servers: int, workers: int, p99_ms: float) -> object:
    step = fleet.Step(servers, workers, seconds=10, offered=0)
    for kind in fleet.KINDS:
        step.latencies[kind] = [p99_ms / 1000] * 10
    return step


def test_the_largest_carried_fleet_is_the_last_size_before_the_first_one_past_the_target() -> None:
    fleet = load_benchmark()
    steps = [_step(fleet, 1, 100, 20), _step(fleet, 1, 250, 60), _step(fleet, 1, 500, 140), _step(fleet, 1, 1000, 90),
             _step(fleet, 2, 100, 30), _step(fleet, 2, 250, 99.9)]

    assert fleet.largest_carried(steps, 1) == 250  # 1,000 under target after 500 over it is luck, not capacity
    assert fleet.largest_carried(steps, 2) == 250
    assert fleet.largest_carried([_step(fleet, 1, 100, 100)], 1) is None


def test_the_wire_client_never_hands_a_cancelled_calls_answer_to_the_next_call() -> None:
    # A simulated worker cancels its heartbeat when its trial ends, perhaps with the heartbeat's answer still
    # on the way: the next call (the complete, then the claim) must read its own answer, not that one.
    fleet = load_benchmark()

    async def answer_each_path_slowly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Each request answered after 0.2 s with its own path, on a keep-alive connection."""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                await reader.readexactly(length)
                await asyncio.sleep(0.2)
                path = head.split(b" ")[1]
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):  # the client closed the connection
            writer.close()

    async def calls() -> tuple[bytes, bytes]:
        server = await asyncio.start_server(answer_each_path_slowly, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = fleet.CLIENTS["wire"](f"http://127.0.0.1:{port}")
        heartbeat = asyncio.create_task(client.post("/trials/1/heartbeat", {}))
        await asyncio.sleep(0.05)
        heartbeat.cancel()
        _, complete = await client.post("/trials/1/complete", {})
        _, claim = await client.post("/trials/claim", {})
        await client.aclose()
        server.close()
        return complete, claim

    assert asyncio.run(calls()) == (b"/api/v1/trials/1/complete", b"/api/v1/trials/claim")
