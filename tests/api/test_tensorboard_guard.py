"""The TensorBoards a server runs are bounded and reachable only through its proxy: real TensorBoard processes.

At most `max_tensorboards` run at once (the least recently used idle one makes room, or the answer is
503), each child refuses a request that does not carry its own secret, which only the proxy adds, and
the proxied answer carries the server's own `server` and `date` headers only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from werkzeug.test import Client
from werkzeug.wrappers import Response

from api.server import RunningServer
from api.tensorboard_child import SECRET_HEADER, require_secret
from api.tensorboards import TensorBoards, TensorBoardsBusyError
from test_tensorboards import IMAGE_SPEC, TEXT_SPEC, board, create, gone, wait_for

pytestmark = pytest.mark.sqlite_only


def child_processes(parent: int) -> list[int]:
    """The live (not zombie) processes whose parent is `parent`, read from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after its last ")".
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == parent and state != "Z":
            children.append(int(entry.name))
    return children


def tensorboard_children() -> list[int]:
    """This process's live TensorBoard children (the server runs in it, in tests)."""
    return [pid for pid in child_processes(os.getpid())
            if b"api.tensorboard_child" in Path(f"/proc/{pid}/cmdline").read_bytes()]


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="counts processes through /proc")


# -- the limit ------------------------------------------------------------------------------------


@pytest.mark.e2e
@needs_proc
def test_a_flood_of_sweeps_runs_at_most_the_limit_and_the_least_recently_used_idle_one_makes_room(
        client_with: Callable[..., TestClient]) -> None:
    client = client_with(max_tensorboards=2)
    sweeps = [create(client, TEXT_SPEC), create(client, IMAGE_SPEC), create(client, {**TEXT_SPEC, "name": "third"})]
    tensorboards = board(client)
    tensorboards.in_use_seconds = 600.0  # everything opened in this test counts as in use, for now

    # All three at once: two start, the third is refused while both are in use.
    answers: dict[int, httpx.Response] = {}

    def open_board(sweep: int) -> None:
        answers[sweep] = client.post(f"/api/v1/sweeps/{sweep}/tensorboard")

    threads = [threading.Thread(target=open_board, args=(sweep,)) for sweep in sweeps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(240)
    codes = sorted(answer.status_code for answer in answers.values())
    assert codes == [200, 200, 503], {sweep: answer.text for sweep, answer in answers.items()}
    (refused,) = [sweep for sweep, answer in answers.items() if answer.status_code == 503]
    detail = answers[refused].json()["detail"]
    assert "2 TensorBoards are running" in detail and "in use" in detail, detail
    assert "--max-tensorboards" in detail and "SWEEPER_MAX_TENSORBOARDS" in detail, detail
    older, newer = [sweep for sweep in sweeps if sweep != refused]
    assert sorted(tensorboards.running()) == sorted([older, newer])
    assert len(tensorboard_children()) == 2
    # A proxied request for the refused sweep is refused the same way, and starts nothing.
    proxied = client.get(f"/tensorboard/{refused}/data/environment")
    assert proxied.status_code == 503 and "in use" in proxied.json()["detail"]
    assert len(tensorboard_children()) == 2

    # Once they are idle, the least recently used one makes room: `older` was used before `newer`.
    assert client.get(f"/tensorboard/{older}/data/environment").status_code == 200
    assert client.get(f"/tensorboard/{newer}/data/environment").status_code == 200
    older_pid, newer_pid = tensorboards.pid(older), tensorboards.pid(newer)
    assert older_pid is not None and newer_pid is not None
    tensorboards.in_use_seconds = 0.0
    environment = client.get(f"/tensorboard/{refused}/data/environment")
    assert environment.status_code == 200, environment.text
    assert wait_for(lambda: gone(older_pid), timeout=15), "the least recently used TensorBoard still runs"
    assert tensorboards.pid(newer) == newer_pid
    assert sorted(tensorboards.running()) == sorted([newer, refused])
    assert len(tensorboard_children()) == 2


class FakeStarts:
    """TensorBoards whose processes are plain sleepers: the limit's bookkeeping without TensorBoard's start-up."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, max_running: int) -> None:
        self.tensorboards = TensorBoards(tmp_path, idle_seconds=600.0, max_running=max_running, in_use_seconds=0.0)
        for sweep in (1, 2, 3):
            (tmp_path / str(sweep)).mkdir()

        def start(tensorboards: TensorBoards, board: Any) -> None:
            board.port, board.secret = 1, "secret"
            board.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                             stdin=subprocess.PIPE)

        monkeypatch.setattr(TensorBoards, "_start", start)


def test_the_least_recently_used_idle_one_makes_room_and_one_serving_a_request_never_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeStarts(tmp_path, monkeypatch, max_running=2)
    tensorboards = fake.tensorboards
    try:
        tensorboards.ensure(1)
        tensorboards.ensure(2)
        tensorboards.touch(1)  # 2 is now the least recently used
        tensorboards.ensure(3)
        assert tensorboards.running() == [1, 3]

        held = tensorboards.acquire(1)  # a request under way: in use, however long ago it began
        assert held.headers == {SECRET_HEADER: "secret"} and "secret" not in repr(held)
        tensorboards.ensure(2)  # 1 is older than 3, but busy: 3 makes room
        assert tensorboards.running() == [1, 2]
        tensorboards.acquire(2)
        with pytest.raises(TensorBoardsBusyError) as refused:
            tensorboards.ensure(3)
        assert str(refused.value).startswith("2 TensorBoards are running")
        assert "--max-tensorboards" in str(refused.value) and "SWEEPER_MAX_TENSORBOARDS" in str(refused.value)
        assert tensorboards.running() == [1, 2]

        tensorboards.release(1)
        tensorboards.ensure(3)
        assert tensorboards.running() == [2, 3]
        # An idle check never stops one whose request is under way, however long the limit has passed.
        tensorboards.idle_seconds = 1e-9
        time.sleep(0.01)
        assert tensorboards.stop_idle() == [3]
        assert tensorboards.running() == [2]
    finally:
        tensorboards.stop_all()


def test_in_use_means_asked_for_something_recently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeStarts(tmp_path, monkeypatch, max_running=1)
    tensorboards = fake.tensorboards
    tensorboards.in_use_seconds = 600.0
    try:
        tensorboards.ensure(1)
        with pytest.raises(TensorBoardsBusyError, match="^1 TensorBoard is running"):
            tensorboards.ensure(2)
        assert tensorboards.running() == [1]
        tensorboards.in_use_seconds = 0.0
        tensorboards.ensure(2)
        assert tensorboards.running() == [2]
    finally:
        tensorboards.stop_all()


def test_max_tensorboards_is_a_setting_with_a_default_of_three(monkeypatch: pytest.MonkeyPatch) -> None:
    from api.settings import Settings

    assert Settings().max_tensorboards == 3
    monkeypatch.setenv("SWEEPER_MAX_TENSORBOARDS", "5")
    assert Settings().max_tensorboards == 5
    with pytest.raises(ValueError, match="max_tensorboards"):
        Settings(max_tensorboards=0)


# -- only the proxy reaches a child ---------------------------------------------------------------


def test_the_child_guard_refuses_a_request_without_the_secret_and_hides_it_from_tensorboard() -> None:
    seen: list[dict[str, Any]] = []

    def tensorboard(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.append(dict(environ))
        answer: Iterable[bytes] = Response("dashboard")(environ, start_response)
        return answer

    guarded = Client(require_secret(tensorboard, "s3cret-value"))
    assert guarded.get("/tensorboard/1/data/environment").status_code == 403
    assert guarded.get("/tensorboard/1/", headers={SECRET_HEADER: "wrong"}).status_code == 403
    assert guarded.get("/tensorboard/1/", headers={SECRET_HEADER: ""}).status_code == 403
    assert seen == []

    answer = guarded.get("/tensorboard/1/", headers={SECRET_HEADER: "s3cret-value"})
    assert answer.status_code == 200 and answer.get_data(as_text=True) == "dashboard"
    assert len(seen) == 1
    assert not any("SECRET" in str(name).upper() for name in seen[0]), "TensorBoard saw the secret"


@pytest.mark.e2e
@needs_proc
def test_a_direct_request_to_a_child_is_refused_while_the_proxied_one_works(client: TestClient) -> None:
    sweep = create(client, TEXT_SPEC)
    assert client.post(f"/api/v1/sweeps/{sweep}/tensorboard").status_code == 200
    pid = board(client).pid(sweep)
    assert pid is not None
    upstream = board(client).ensure(sweep)
    direct_url = f"http://127.0.0.1:{upstream.port}/tensorboard/{sweep}/data/environment"

    # Any local user can reach the port; without the secret (or with another one) they get 403.
    refused = httpx.get(direct_url, trust_env=False)
    assert refused.status_code == 403, refused.text
    assert httpx.get(direct_url, headers={SECRET_HEADER: "guess"}, trust_env=False).status_code == 403
    # The proxy's own header is not the caller's to give: a forged one is dropped, and the proxy's used.
    proxied = client.get(f"/tensorboard/{sweep}/data/environment", headers={SECRET_HEADER: "guess"})
    assert proxied.status_code == 200, proxied.text
    assert "data_location" in proxied.json()

    # The secret is in no command line (`ps` shows those to every user), and TensorBoard starts no
    # data server of its own (a gRPC port on localhost that would answer without any secret).
    secret = upstream.headers[SECRET_HEADER]
    assert len(secret) >= 32
    assert secret.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert child_processes(pid) == []


# -- the proxied answer's headers -----------------------------------------------------------------


@pytest.mark.e2e
def test_a_proxied_answer_has_one_server_and_one_date_header(start_server: Callable[..., RunningServer]) -> None:
    server = start_server()
    with httpx.Client(base_url=server.url, trust_env=False, timeout=120) as http:
        created = http.post("/api/v1/sweeps", json=TEXT_SPEC)
        assert created.status_code == 201, created.text
        sweep = created.json()["id"]
        for path in (f"/tensorboard/{sweep}/", f"/tensorboard/{sweep}/data/environment"):
            answer = http.get(path)
            assert answer.status_code == 200, answer.text
            assert len(answer.headers.get_list("server")) == 1, answer.headers
            assert len(answer.headers.get_list("date")) == 1, answer.headers
            assert SECRET_HEADER.lower() not in {name.lower() for name in answer.headers}
