"""What every browser test module needs first: Debian's Chromium and Playwright, or a skip of the whole module
that says how to get them. Imported at the top of each module, before anything else it needs:

    from browser_testing import CHROMIUM, sync_api
"""

from __future__ import annotations

import shutil

import pytest

CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (pip install "
                                                              "-e '.[dev]')")
