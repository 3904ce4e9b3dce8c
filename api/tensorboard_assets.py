"""TensorBoard's web assets as a sweep's TensorBoard serves them: its HParams dashboard ticks every hparam
that varies, not only the first five.

The dashboard ticks the first five hparams of the experiment (varying ones first: the sweep's config marks
them `differs`, see sweeper.hparams_log), and TensorBoard has no flag or setting for that number; a sweep
that varies `units`, `dropout`, `depth`, `learning_rate` (with its `log10_` column), `optimizer` and
`lr_schedule` would leave two of them out of the table and the plots. So the one statement that picks them
is rewritten in the frontend bundle, handed to TensorBoard through its own `assets_zip_provider` hook: at
least five as before, and every varying one. A TensorBoard whose bundle no longer holds that statement is
served unchanged (with a warning): its dashboard then shows the first five, varying ones first.
"""

from __future__ import annotations

import io
import logging
import re
import sys
import zipfile
from collections.abc import Callable
from typing import Any, BinaryIO

logger = logging.getLogger(__name__)

BUNDLE = "index.js"
"""The file of TensorBoard's web assets that holds the HParams dashboard."""

# TensorBoard 2.21's HParams query pane, minified: `let n=Math.min(5,t.length);for(let i=0;i<n;i++)t[i].displayed=!0;`
# where `t` is the experiment's hparams, varying ones first. Names are matched, not assumed.
_TICK_FIRST_FIVE = re.compile(rb"let ([\w$]+)=Math\.min\(5,([\w$]+)\.length\);"
                              rb"for\(let ([\w$]+)=0;\3<\1;\3\+\+\)\2\[\3\]\.displayed=!0;")
_TICK_EVERY_VARYING = (rb"let \1=Math.max(Math.min(5,\2.length),\2.filter(h=>h.info.differs).length);"
                       rb"for(let \3=0;\3<\1;\3++)\2[\3].displayed=!0;")

AssetsZipProvider = Callable[[], BinaryIO]


def tick_every_varying_hparam(bundle: bytes) -> bytes | None:
    """`bundle` (TensorBoard's index.js) with its HParams dashboard ticking every varying hparam, or None when
    it does not hold the statement to change exactly once."""
    patched, count = _TICK_FIRST_FIVE.subn(_TICK_EVERY_VARYING, bundle)
    return patched if count == 1 else None


def hparams_assets(default: AssetsZipProvider | None = None) -> AssetsZipProvider | None:
    """An `assets_zip_provider` for `program.TensorBoard`: TensorBoard's own assets (`default`, or the
    installed ones) with `tick_every_varying_hparam` applied; the assets unchanged where it does not apply."""
    if default is None:
        from tensorboard import assets

        default = assets.get_default_assets_zip_provider()
        if default is None:
            return None
    output = io.BytesIO()
    with default() as source, zipfile.ZipFile(source) as original, \
            zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as rewritten:
        for entry in original.infolist():
            content = original.read(entry)
            if entry.filename == BUNDLE:
                patched = tick_every_varying_hparam(content)
                if patched is None:
                    logger.warning("this TensorBoard's %s does not pick the HParams columns as expected; it is "
                                   "served unchanged, so its dashboard ticks only the first five hparams", BUNDLE)
                    return default
                content = patched
            rewritten.writestr(entry, content)
    data = output.getvalue()
    return lambda: io.BytesIO(data)


def run_tensorboard(server_class: Callable[..., Any] | None = None) -> None:
    """tensorboard.main.run_main with these assets (and `server_class`, if given, to serve the WSGI app):
    TensorBoard parses its own flags from sys.argv and serves until stopped."""
    from absl import app
    from tensorboard import default, main_lib, program
    from tensorboard.plugins import base_plugin

    main_lib.global_init()
    options: dict[str, Any] = {} if server_class is None else {"server_class": server_class}
    tensorboard = program.TensorBoard(plugins=default.get_plugins(), assets_zip_provider=hparams_assets(), **options)
    try:
        app.run(tensorboard.main, flags_parser=tensorboard.configure)
    except base_plugin.FlagsError as error:
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(1)
