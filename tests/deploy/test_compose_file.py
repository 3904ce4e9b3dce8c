"""docker-compose.yml and the Dockerfile, read the way docker would: no docker engine runs here, so
these tests parse both files and check what a deployment depends on.

Each service's command is parsed by the real `sweeper` CLI (click's parser, without running it), so
a renamed command or option breaks this test, not a lab's deployment.
"""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from sweeper_commands import all_envvars, parse_sweeper_command

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # resolves the `<<:` merges too
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
WORKERS = {name: service for name, service in SERVICES.items() if name.startswith("worker")}


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, with continued lines joined and comments left out."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_the_stack_has_an_api_a_postgres_profile_and_a_worker_per_gpu() -> None:
    assert {"api", "postgres"} <= set(SERVICES)
    assert SERVICES["postgres"]["profiles"] == ["postgres"]
    assert "profiles" not in SERVICES["api"]
    assert len(WORKERS) >= 2


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_healthcheck(name: str) -> None:
    check = SERVICES[name]["healthcheck"]["test"]
    assert check[0] in ("CMD", "CMD-SHELL") and len(check) > 1


def test_postgres_keeps_its_data_in_a_named_volume() -> None:
    postgres = SERVICES["postgres"]
    assert any(mount.split(":")[1] == "/var/lib/postgresql/data" and mount.split(":")[0] in COMPOSE["volumes"]
               for mount in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_each_worker_reserves_exactly_one_distinct_nvidia_gpu() -> None:
    device_ids: list[str] = []
    for name, worker in WORKERS.items():
        (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia", name
        assert "gpu" in device["capabilities"], name
        assert len(device["device_ids"]) == 1, f"{name} must see exactly one GPU"
        device_ids.extend(device["device_ids"])
    assert len(set(device_ids)) == len(device_ids), f"two workers share a GPU: {device_ids}"


def test_workers_wait_for_a_healthy_api_and_share_its_logs() -> None:
    api_logs = {mount for mount in SERVICES["api"]["volumes"] if mount.endswith(":/runs")}
    assert api_logs
    for name, worker in WORKERS.items():
        assert worker["depends_on"]["api"]["condition"] == "service_healthy", name
        assert api_logs <= set(worker["volumes"]), f"{name} must write the logs where the server reads them"


def test_the_api_waits_for_postgres_only_when_the_profile_runs_it() -> None:
    postgres = SERVICES["api"]["depends_on"]["postgres"]
    assert postgres == {"condition": "service_healthy", "required": False}


def test_named_volumes_are_declared() -> None:
    for name, service in SERVICES.items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in COMPOSE["volumes"], f"{name} mounts undeclared volume {source!r}"


def test_the_api_listens_on_all_addresses_only_with_tokens() -> None:
    # `sweeper serve` refuses a non-loopback address without an admin token: the stack must set one.
    environment = SERVICES["api"]["environment"]
    assert "SWEEPER_ADMIN_TOKEN" in environment and "SWEEPER_WORKER_TOKEN" in environment
    for worker in WORKERS.values():
        assert "SWEEPER_TOKEN" in worker["environment"]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_sweeper_command_a_service_runs_is_a_command_of_the_cli(name: str) -> None:
    service = SERVICES[name]
    commands = [service["command"]] if "command" in service else []
    commands += [check["test"][1:] for check in [service["healthcheck"]] if check["test"][0] == "CMD"]
    for argv in commands:
        if argv[0] == "sweeper":
            parse_sweeper_command(argv)


def test_environment_variables_the_services_set_are_read_by_the_cli() -> None:
    # A misspelt variable would be ignored silently by the CLI; each must be some option's envvar.
    envvars = all_envvars()
    for name, service in SERVICES.items():
        for variable in service.get("environment", {}):
            if variable.startswith("SWEEPER_"):
                assert variable in envvars, f"{name} sets {variable}, which no sweeper command reads"


def test_the_image_builds_on_tensorflows_official_gpu_image() -> None:
    instructions = _dockerfile()
    arguments = dict(arg.split("=", 1) for kind, arg in instructions if kind == "ARG")
    (base,) = [arg for kind, arg in instructions if kind == "FROM"]
    base = base.replace("${TENSORFLOW_VERSION}", arguments["TENSORFLOW_VERSION"])
    image, tag = base.split(":")
    assert image == "tensorflow/tensorflow"
    assert tag.endswith("-gpu")


def test_the_image_copies_only_files_that_exist_and_runs_the_server() -> None:
    instructions = _dockerfile()
    for kind, arguments in instructions:
        if kind == "COPY":
            *sources, _target = shlex.split(arguments)
            for source in sources:
                assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
    (command,) = [arguments for kind, arguments in instructions if kind == "CMD"]
    parse_sweeper_command(yaml.safe_load(command))
    assert any(kind == "HEALTHCHECK" and "/healthz" in arguments for kind, arguments in instructions)
    assert ("EXPOSE", "8000") in instructions


def test_the_image_copies_every_package_that_the_project_installs() -> None:
    # `pip install .` in the image finds only the packages copied in: a missing one breaks the `sweeper` command.
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    copied = {shlex.split(arguments)[0] for kind, arguments in _dockerfile() if kind == "COPY"}
    assert packages <= copied, f"the Dockerfile does not copy {sorted(packages - copied)}"
