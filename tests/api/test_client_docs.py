"""docs/client.md's examples run as written, in order, against a real server, and do what the doc says;
docs/api.md names every endpoint."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from api.server import RunningServer
from api.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DOC = (ROOT / "docs" / "client.md").read_text()
API_DOC = (ROOT / "docs" / "api.md").read_text()


def test_the_client_guide_runs_as_written(server: RunningServer, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("SWEEPER_SERVER", server.url)
    monkeypatch.delenv("SWEEPER_TOKEN", raising=False)
    monkeypatch.chdir(ROOT)  # the guide reads examples/digits.yaml from the repository root
    blocks = re.findall(r"```python\n(.*?)```", CLIENT_DOC, flags=re.S)
    assert len(blocks) >= 4
    namespace: dict[str, Any] = {}

    for block in blocks:
        exec(compile(block, "docs/client.md", "exec"), namespace)

    sweep, best, curve = namespace["sweep"], namespace["best"], namespace["curve"]
    assert sweep["status"] == "completed" and sweep["trial_counts"]["completed"] == sweep["total_trials"] == 12
    assert namespace["from_file"]["name"] == "digits-mlp" and namespace["from_file"]["total_trials"] == 12
    scores = [point["value"] for point in curve["points"]]
    assert len(scores) == 12 and best["metrics"]["val_accuracy"] == max(scores)
    assert [trial["id"] for trial in namespace["top_three"]][0] == best["id"]
    assert namespace["third"]["number"] == 3 and len(namespace["third"]["history"]) == sweep["spec"]["train"]["epochs"]
    dropouts = [trial["hparams"]["dropout"] for trial in namespace["by_dropout"]["data"]]
    assert dropouts == sorted(dropouts, reverse=True)
    assert {entry["hparam"] for entry in namespace["importance"]["importances"]} == {"units", "dropout",
                                                                                    "learning_rate"}
    assert namespace["importance"]["completed"] == 12 and namespace["importance"]["importances"]
    assert len(namespace["table"].splitlines()) == 13  # a header and a row per trial
    printed = capsys.readouterr().out
    assert "422 ['hparams.dropout: min (0.5) must be < max (0.1)']" in printed
    assert "sweep 1000000 not found" in printed


def test_the_api_guide_names_every_endpoint():
    document = create_app(Settings(database_url="sqlite://")).openapi()

    missing = [f"{method.upper()} {path}" for path, operations in document["paths"].items() for method in operations
               if f"`{method.upper()} {path}`" not in API_DOC]

    assert not missing, f"docs/api.md does not describe {missing}"
