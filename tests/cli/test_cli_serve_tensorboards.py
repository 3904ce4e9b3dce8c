"""`sweeper serve --max-tensorboards`: the flag and its environment variable reach the server's settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import api.server
from api.settings import Settings
from cli import app


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """The settings `sweeper serve` would start a server with (none is started)."""
    seen: list[Settings] = []
    monkeypatch.setattr(api.server, "serve", seen.append)
    return seen


def serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(app, ["serve", "--database-url", f"sqlite:///{tmp_path / 'sweeper.db'}",
                                      "--logdir", str(tmp_path / "runs"), *args],
                                env={"COLUMNS": "200", **(env or {})})
    return f"{result.exit_code}: {result.output}"


def test_max_tensorboards_defaults_to_three_and_is_set_by_the_flag_or_the_environment(
        tmp_path: Path, served: list[Settings]) -> None:
    assert serve(tmp_path).startswith("0:")
    assert serve(tmp_path, "--max-tensorboards", "1").startswith("0:")
    assert serve(tmp_path, env={"SWEEPER_MAX_TENSORBOARDS": "7"}).startswith("0:")
    assert [settings.max_tensorboards for settings in served] == [3, 1, 7]


def test_a_limit_below_one_is_refused_with_the_setting_named(tmp_path: Path, served: list[Settings]) -> None:
    output = serve(tmp_path, "--max-tensorboards", "0")
    assert output.startswith("2:") and "max_tensorboards" in output, output
    assert served == []


def test_the_help_says_what_the_limit_does() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--max-tensorboards" in result.output and "SWEEPER_MAX_TENSORBOARDS" in result.output
    assert "least recently used" in result.output and "503" in result.output
