"""The sweep's TensorBoard serves TensorBoard's own web assets with one statement changed: its HParams dashboard
ticks every varying hparam, not only the first five. Checked here against the installed TensorBoard's bundle;
tests/web/test_tensorboard_in_browser.py sees the result in a browser."""

from __future__ import annotations

import io
import zipfile

import pytest

from api.tensorboard_assets import BUNDLE, hparams_assets, tick_every_varying_hparam

assets = pytest.importorskip("tensorboard.assets", reason="TensorBoard is not installed")


def _bundle(provider) -> bytes:
    with provider() as source, zipfile.ZipFile(source) as archive:
        return archive.read(BUNDLE)


def test_the_installed_tensorboards_dashboard_is_made_to_tick_every_varying_hparam() -> None:
    original = _bundle(assets.get_default_assets_zip_provider())

    served = _bundle(hparams_assets())

    assert served != original
    assert served == tick_every_varying_hparam(original)
    assert b".filter(h=>h.info.differs).length" in served
    assert len(served) - len(original) < 100  # one statement, nothing else


def test_every_other_asset_is_served_as_tensorboard_ships_it() -> None:
    default = assets.get_default_assets_zip_provider()
    with default() as source, zipfile.ZipFile(source) as archive:
        original = {name: archive.read(name) for name in archive.namelist() if name != BUNDLE}
    with hparams_assets()() as source, zipfile.ZipFile(source) as archive:
        served = {name: archive.read(name) for name in archive.namelist() if name != BUNDLE}
    assert served == original


def test_a_bundle_without_the_statement_is_served_unchanged() -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as writer:
        writer.writestr(BUNDLE, b"let n=Math.min(6,t.length);")
    data = archive.getvalue()

    def unknown() -> io.BytesIO:
        return io.BytesIO(data)

    assert hparams_assets(unknown) is unknown
