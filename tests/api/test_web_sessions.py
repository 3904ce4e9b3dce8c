"""The web page's sessions: the cookie holds a random session id, never the token; the server keeps the session
(hashed) in the database, shared by every server on it, and ends it at logout, at expiry, or when the token
that opened it is no longer configured.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from api.models import WebSessionRow, utcnow
from api_testing import API

ADMIN = "admin-0123456789abcdef-ADMIN"
WORKER = "worker-0123456789abcdef-WORKER"
OTHER_ADMIN = "admin-fedcba9876543210-OTHER"


@pytest.fixture
def secured(client_with: Callable[..., TestClient]) -> TestClient:
    return client_with(admin_token=ADMIN, worker_token=WORKER)


def log_in(client: TestClient, token: str = ADMIN) -> tuple[str, str]:
    """Log `client` in with `token`; the cookie's (name, value) as the server set it."""
    login = client.post(f"{API}/session", json={"token": token})
    assert login.status_code == 204, login.text
    name, _, value = login.headers["set-cookie"].split(";")[0].partition("=")
    return name, value


def with_cookie(client: TestClient, cookie: tuple[str, str]) -> TestClient:
    """Another client of `client`'s app (or another app), sending only `cookie`."""
    name, value = cookie
    return TestClient(client.app, cookies={name: value})


def stored_rows(client: TestClient) -> list[WebSessionRow]:
    with client.app.state.context.sessions() as session:
        return list(session.scalars(select(WebSessionRow)))


def test_the_cookie_holds_a_random_session_id_never_the_token(secured: TestClient) -> None:
    first = secured.post(f"{API}/session", json={"token": ADMIN})
    second = TestClient(secured.app).post(f"{API}/session", json={"token": ADMIN})

    for login in (first, second):
        assert ADMIN not in login.headers["set-cookie"]
    first_id = first.headers["set-cookie"].split(";")[0].partition("=")[2]
    second_id = second.headers["set-cookie"].split(";")[0].partition("=")[2]
    assert len(first_id) >= 43 and first_id != second_id  # 256 random bits each
    assert secured.get(f"{API}/sweeps").status_code == 200
    # The database holds neither the token nor a session id anyone could present: only hashes.
    rows = stored_rows(secured)
    assert len(rows) == 2
    stored = " ".join(f"{row.id_hash} {row.role} {row.token_fingerprint}" for row in rows)
    assert first_id not in stored and second_id not in stored and ADMIN not in stored
    assert {row.role for row in rows} == {"admin"}


def test_after_logging_out_the_old_cookie_is_refused(secured: TestClient) -> None:
    cookie = log_in(secured)
    assert with_cookie(secured, cookie).get(f"{API}/sweeps").status_code == 200

    assert secured.delete(f"{API}/session").status_code == 204

    for path in (f"{API}/sweeps", f"{API}/session", "/docs", "/tensorboard/1/"):
        replayed = with_cookie(secured, cookie).get(path)
        assert replayed.status_code == 401, (path, replayed.status_code)
        assert replayed.json() == {"detail": "invalid token"}
    assert stored_rows(secured) == []


def test_logging_in_again_replaces_the_session(secured: TestClient) -> None:
    first = log_in(secured)
    second = log_in(secured)  # the client sends the first cookie with this login

    assert with_cookie(secured, first).get(f"{API}/sweeps").status_code == 401
    assert with_cookie(secured, second).get(f"{API}/sweeps").status_code == 200


def test_a_session_lasts_session_hours_and_an_expired_one_is_refused(client_with: Callable[..., TestClient]) -> None:
    client = client_with(admin_token=ADMIN, worker_token=WORKER, session_hours=2)
    cookie = log_in(client)
    [row] = stored_rows(client)
    assert row.expires_at - row.created_at == timedelta(hours=2)

    with client.app.state.context.sessions.begin() as session:
        session.execute(update(WebSessionRow).values(expires_at=utcnow() - timedelta(seconds=1)))

    expired = with_cookie(client, cookie).get(f"{API}/sweeps")
    assert expired.status_code == 401 and expired.json() == {"detail": "invalid token"}
    assert with_cookie(client, cookie).get(f"{API}/session").status_code == 401
    # The next login deletes expired sessions.
    log_in(TestClient(client.app))
    assert len(stored_rows(client)) == 1


def test_changing_a_token_ends_the_sessions_it_opened(client_with: Callable[..., TestClient]) -> None:
    before = client_with(admin_token=ADMIN, worker_token=WORKER)
    admin_cookie = log_in(before, ADMIN)
    worker_cookie = log_in(TestClient(before.app), WORKER)

    # The same database, served with a new admin token: the admin's session ends, the worker's holds.
    after = client_with(admin_token=OTHER_ADMIN, worker_token=WORKER)
    assert with_cookie(after, admin_cookie).get(f"{API}/sweeps").status_code == 401
    assert with_cookie(after, admin_cookie).get(f"{API}/session").status_code == 401
    assert with_cookie(after, worker_cookie).get(f"{API}/session").json() == {"role": "worker"}

    # The tokens swapped: neither session may take the other's role.
    swapped = client_with(admin_token=WORKER, worker_token=ADMIN)
    assert with_cookie(swapped, admin_cookie).get(f"{API}/session").status_code == 401
    assert with_cookie(swapped, worker_cookie).get(f"{API}/session").status_code == 401
    # Without the worker token configured any more, the worker's session ends too.
    admin_only = client_with(admin_token=ADMIN)
    assert with_cookie(admin_only, worker_cookie).get(f"{API}/session").status_code == 401
    assert with_cookie(admin_only, admin_cookie).get(f"{API}/session").json() == {"role": "admin"}


def test_sessions_are_shared_by_every_server_on_the_database(client_with: Callable[..., TestClient]) -> None:
    one = client_with(admin_token=ADMIN, worker_token=WORKER)
    other = client_with(admin_token=ADMIN, worker_token=WORKER)  # a second process, or a restart
    cookie = log_in(one)

    assert with_cookie(other, cookie).get(f"{API}/sweeps").status_code == 200
    assert with_cookie(other, cookie).get(f"{API}/session").json() == {"role": "admin"}

    assert with_cookie(other, cookie).delete(f"{API}/session").status_code == 204  # logged out on the other
    assert with_cookie(one, cookie).get(f"{API}/sweeps").status_code == 401


def test_a_cookie_holding_the_token_itself_is_no_credential_and_login_drops_it(secured: TestClient) -> None:
    # What earlier versions set: the token in the `sweeper_token` cookie.
    legacy = TestClient(secured.app, cookies={"sweeper_token": ADMIN})
    assert legacy.get(f"{API}/sweeps").status_code == 401
    forged = TestClient(secured.app, cookies={"sweeper_session": ADMIN})
    assert forged.get(f"{API}/sweeps").status_code == 401

    login = legacy.post(f"{API}/session", json={"token": ADMIN})

    dropped = [cookie for cookie in login.headers.get_list("set-cookie") if cookie.startswith("sweeper_token=")]
    assert len(dropped) == 1 and "Max-Age=0" in dropped[0]


def test_the_bearer_header_needs_no_session(secured: TestClient) -> None:
    assert secured.get(f"{API}/sweeps", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    assert stored_rows(secured) == []


@pytest.mark.sqlite_only  # holds SQLite's own write lock from outside the server
def test_a_cookie_checked_while_the_database_is_locked_answers_503_not_500(
        secured: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from api import db

    cookie = log_in(secured)
    browser = with_cookie(secured, cookie)
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 50)
    secured.app.state.context.engine.dispose()  # new connections take the short timeout
    url = secured.app.state.context.settings.database_url
    blocker = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        answer = browser.get(f"{API}/sweeps")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "1"
    assert answer.json() == {"detail": "the database is busy; retry the request"}
    assert browser.get(f"{API}/sweeps").status_code == 200
