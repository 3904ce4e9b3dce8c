"""Specs posted as YAML (the web page's "paste YAML" box): read like a spec file, a syntax error naming its
line, and what YAML can say but a spec cannot refused at its path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from api_testing import API, grid_spec
from fastapi.testclient import TestClient

from sweeper import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[2]
DIGITS = (ROOT / "examples" / "digits.yaml").read_text()


def _post(client: TestClient, text: str | bytes, path: str = "/sweeps", media_type: str = "application/yaml"):
    return client.post(f"{API}{path}", content=text, headers={"content-type": media_type})


@pytest.mark.parametrize("media_type", ["application/yaml", "text/yaml", "application/x-yaml; charset=utf-8"])
def test_a_yaml_spec_creates_the_same_sweep_as_the_file_does(client: TestClient, media_type: str):
    response = _post(client, DIGITS, media_type=media_type)

    assert response.status_code == 201, response.text
    assert response.json()["spec"] == load_spec(ROOT / "examples" / "digits.yaml").to_json()


def test_validating_a_yaml_spec_sizes_it_without_creating_anything(client: TestClient):
    response = _post(client, yaml.safe_dump(grid_spec(values=4)), path="/sweeps/validate")

    assert response.status_code == 200
    assert response.json()["total_trials"] == 4
    assert client.get(f"{API}/sweeps").json()["count"] == 0


def test_a_yaml_syntax_error_is_422_naming_the_line(client: TestClient, tmp_path: Path):
    broken = DIGITS.replace("model: mlp", "model: [mlp", 1)
    (tmp_path / "broken.yaml").write_text(broken)

    response = _post(client, broken)

    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body"] and problem["msg"].startswith("line ")
    # Exactly what `sweeper check` says about the same text in a file.
    with pytest.raises(SpecError) as error:
        load_spec(tmp_path / "broken.yaml")
    assert problem["msg"] in str(error.value)


def test_a_yaml_spec_with_a_mistake_is_422_at_the_field_like_json(client: TestClient):
    spec = grid_spec()
    spec["hparams"]["dropout"] = {"type": "real_interval", "min": 0.5, "max": 0.1}

    as_yaml = _post(client, yaml.safe_dump(spec))
    as_json = client.post(f"{API}/sweeps", json=spec)

    assert as_yaml.status_code == 422
    # The same problems at the same fields; the YAML body's also say on which line the field is.
    detail = as_yaml.json()["detail"]
    lines = [problem.pop("line") for problem in detail]
    assert detail == as_json.json()["detail"]
    assert lines == [yaml.safe_dump(spec).splitlines().index("  dropout:") + 1]


@pytest.mark.parametrize("text, loc, message", [
    ("name: 2024-06-01\n", ["body", "name"], "YAML read a date; quote it"),
    ("name: x\nhparams: {dropout: .nan}\n", ["body", "hparams", "dropout"], "must be a finite number"),
    ("name: x\nhparams: !!set {a, b}\n", ["body", "hparams"], "YAML read a set"),
    ("- a list\n", ["body"], "a sweep spec must be a mapping"),
    (b"name: caf\xe9\n", ["body"], "must be UTF-8 text"),
], ids=["date", "nan", "set", "list", "latin-1"])
def test_yaml_that_no_spec_can_hold_is_422_at_its_path(client: TestClient, text: str | bytes, loc: list[str],
                                                        message: str):
    response = _post(client, text)

    assert response.status_code == 422
    assert any(problem["loc"] == loc and message in problem["msg"] for problem in response.json()["detail"]), \
        response.json()


def test_yaml_aliases_that_blow_up_are_refused_before_anything_walks_them(client: TestClient):
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]  # 10**8 values

    response = _post(client, "\n".join(lines) + "\n")

    assert response.status_code == 422
    assert "more than 1000000 values (YAML aliases" in response.json()["detail"][0]["msg"]


def test_a_body_in_another_media_type_or_none_is_415(client: TestClient):
    plain = _post(client, DIGITS, media_type="text/plain")
    unsaid = client.post(f"{API}/sweeps", content=DIGITS.encode())

    assert (plain.status_code, unsaid.status_code) == (415, 415)
    assert plain.json() == {"detail": "a sweep spec is sent as application/json or application/yaml, not text/plain"}
    assert unsaid.json()["detail"].endswith("not a body without a Content-Type")
