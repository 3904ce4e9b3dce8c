"""The web page: its shell at `/`, its scripts and styles under `/static/`, and what its form offers.

The page and its static files are public (they hold no data; the page asks for a token when the API
answers 401). Everything is served by the app itself, so the page works offline.

Caching without a build step: the shell names every file with its content's fingerprint
(`/static/app.js?v=3f2a...`), and an import map gives the modules' own imports (`./api.js`) the same
fingerprinted URLs. A fingerprinted URL never changes content, so the browser keeps it for good and a
page load asks the server for the shell alone; a new version of a file has a new URL.

The shell's Content-Security-Policy (api.security_headers) lets it run only the server's own scripts and
its two inline ones, named by their hashes: the import map, and the script that starts the sweeps list's
first request while the modules load.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import Scope

from sweeper import datasets as dataset_registry
from sweeper import models as model_registry

from api.auth import AdminDep
from api.security_headers import content_security_policy

STATIC = Path(__file__).resolve().parent.parent / "web" / "static"
IMPORT_MAP_SLOT = "<!-- import map -->"
_STATIC_URL = re.compile(r'"/static/([\w.-]+)"')
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\ssrc=)[^>]*>(.*?)</script>", re.DOTALL)


class _FingerprintedFiles(StaticFiles):
    """Static files: kept for good under a fingerprinted URL (`?v=`), revalidated on every load otherwise."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        fingerprinted = b"v=" in scope.get("query_string", b"") and response.status_code in (200, 304)
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable" if fingerprinted else "no-cache"
        return response


@cache
def page_html() -> str:
    """index.html with fingerprinted URLs and its import map; built once (the files ship with the package)."""
    versions = {file.name: hashlib.sha256(file.read_bytes()).hexdigest()[:16]
                for file in STATIC.iterdir() if file.is_file() and file.name != "index.html"}
    imports = {f"/static/{name}": f"/static/{name}?v={version}" for name, version in sorted(versions.items())
               if name.endswith(".js")}
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    html = _STATIC_URL.sub(lambda match: f'"/static/{match[1]}?v={versions[match[1]]}"', html)
    return html.replace(IMPORT_MAP_SLOT, f'<script type="importmap">{json.dumps({"imports": imports})}</script>')


@cache
def page_policy() -> str:
    """The shell's Content-Security-Policy: the server's, with the hash of each inline script the shell holds."""
    hashes = [f"'sha256-{base64.b64encode(hashlib.sha256(script.encode('utf-8')).digest()).decode('ascii')}'"
              for script in _INLINE_SCRIPT.findall(page_html())]
    return content_security_policy(script_hashes=hashes)


router = APIRouter(include_in_schema=False)
router.mount("/static", _FingerprintedFiles(directory=STATIC), name="static")

registry_router = APIRouter(tags=["registry"], dependencies=[AdminDep])


@router.get("/")
def page() -> HTMLResponse:
    # Revalidated on every load: it is what names the current version of every other file.
    return HTMLResponse(page_html(), headers={"Cache-Control": "no-cache", "Content-Security-Policy": page_policy()})


class RegistryPublic(BaseModel):
    models: list[str]
    """Registered model names (built-ins and plugins)."""
    datasets: list[str]
    """Registered dataset names; a spec may also name a file under the workers' data root."""
    dataset_formats: list[str]
    """Prefixes of file datasets, as in `npz:sets/mine.npz`."""


@registry_router.get("/registry", response_model=RegistryPublic)
def registry() -> RegistryPublic:
    """The models and datasets a spec may name on this server."""
    return RegistryPublic(models=model_registry.names(), datasets=dataset_registry.names(),
                          dataset_formats=dataset_registry.formats())
