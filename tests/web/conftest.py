"""Fixtures the browser tests share: a real server with both tokens, and a headless Chromium (Debian's, driven
by Playwright). Each test module still skips as a whole where Chromium or Playwright is missing."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.server import RunningServer, start_in_thread
from api.settings import Settings


@pytest.fixture
def tokens() -> dict[str, str]:
    return {"admin": secrets.token_urlsafe(32), "worker": secrets.token_urlsafe(32)}


@pytest.fixture
def server(tmp_path: Path, tokens: dict[str, str]) -> Iterator[RunningServer]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'sweeper.db'}", logdir=tmp_path / "runs", port=0,
                        admin_token=tokens["admin"], worker_token=tokens["worker"])
    with start_in_thread(settings) as running:
        yield running


@pytest.fixture
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=shutil.which("chromium"))
        yield chromium
        chromium.close()
