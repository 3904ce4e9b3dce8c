"""The packages' import rules hold: each contract in pyproject.toml's [tool.importlinter], checked by import-linter.

The contracts: `cli -> api, workers -> sweeper`, with api and workers never importing each other; an
underscore module imported only from inside its own package (everyone else uses the names its
package's `__init__` exports); no server or database library in the core or the workers. import-linter
reads every import statement, those inside functions too, so a lazy import cannot slip past.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS: list[dict[str, Any]] = (
    tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"])
# import-linter's own command; run from the root, so it reads this checkout's packages.
LINT_IMPORTS = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def lint_imports(contract_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", LINT_IMPORTS, "--no-cache", "--no-logo", "--contract", contract_id,
                           "pyproject.toml"], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("contract", CONTRACTS, ids=[contract["id"] for contract in CONTRACTS])
def test_every_import_keeps_the_contract(contract: dict[str, Any]) -> None:
    result = lint_imports(contract["id"])

    if result.returncode != 0:
        pytest.fail(f"{contract['name']}: broken\n{result.stdout}{result.stderr}", pytrace=False)


def test_the_contracts_cover_the_layers_and_the_underscore_rule() -> None:
    # The two rules the layout rests on: other contracts may come and go, these two may not.
    kinds = {contract["type"]: contract for contract in CONTRACTS}

    assert kinds["layers"]["layers"] == ["cli", "api | workers", "sweeper"]
    assert set(kinds["private_modules"]["packages_with_private_modules"]) == {"cli", "api", "workers", "sweeper"}
