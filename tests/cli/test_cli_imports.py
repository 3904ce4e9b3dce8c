"""The `sweeper` command starts light: the server's and the workers' libraries load only in the commands using them."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_command_loads_no_tensorflow_fastapi_or_sqlalchemy() -> None:
    # `sweeper submit` and `sweeper status` on a laptop answer in a fraction of a second.
    code = ("import sys, cli\n"
            "heavy = [m for m in ('tensorflow', 'fastapi', 'sqlalchemy') if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
