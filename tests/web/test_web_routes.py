"""The web page's routes over the real app: a public shell and static files, all served by the app itself
(nothing from another host), and the registry the form is filled from, behind the admin token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings

STATIC = Path(__file__).resolve().parents[2] / "api" / "web" / "static"
ADMIN, WORKER = "admin-token-" + "a" * 20, "worker-token-" + "w" * 20
SVG_NAMESPACE = "http://www.w3.org/2000/svg"
"""A name in the DOM API, not an address anything is fetched from."""


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'sweeper.db'}", logdir=tmp_path / "runs",
                        admin_token=ADMIN, worker_token=WORKER)
    with TestClient(create_app(settings)) as client:
        yield client


def test_the_page_and_its_files_need_no_token(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    script = re.search(r'<script type="module" src="(/static/app\.js\?v=\w+)">', page.text)
    assert script is not None, page.text
    assert client.get(script[1]).status_code == client.get("/static/style.css").status_code == 200
    assert client.get("/static/missing.js").status_code == 404


def test_fingerprinted_files_are_kept_for_good_and_the_rest_revalidated_on_every_load(client: TestClient) -> None:
    page = client.get("/")
    fingerprinted = re.search(r'src="(/static/app\.js\?v=\w+)"', page.text)
    assert fingerprinted is not None

    assert page.headers["cache-control"] == "no-cache"  # it names the current version of everything else
    assert client.get(fingerprinted[1]).headers["cache-control"] == "public, max-age=31536000, immutable"
    assert client.get("/static/app.js").headers["cache-control"] == "no-cache"
    missing = client.get("/static/missing.js?v=0123")
    assert missing.status_code == 404 and "immutable" not in missing.headers.get("cache-control", "")


def test_every_file_the_page_loads_is_served_by_the_app_and_none_comes_from_another_host(client: TestClient) -> None:
    index = client.get("/").text
    import_map = json.loads(re.search(r'<script type="importmap">(.*?)</script>', index, re.S)[1])["imports"]
    wanted = set(re.findall(r'(?:src|href)="(/static/[^"]+)"', index))
    served: dict[str, str] = {}
    while wanted:
        url = wanted.pop()
        answer = client.get(url)
        assert answer.status_code == 200, f"{url} is referenced but not served"
        name = url.removeprefix("/static/").partition("?")[0]
        assert answer.content == (STATIC / name).read_bytes()
        served[name] = answer.text
        if name.endswith(".js"):
            # Static and dynamic imports, relative to the module, each found in the import map (all of our
            # modules live in one folder), so each is fetched by its fingerprinted URL.
            for imported in re.findall(r'(?:from\s+|import\()\s*"\./([\w.-]+\.js)"', answer.text):
                assert f"/static/{imported}" in import_map, f"{name} imports {imported}, missing from the import map"
                if imported not in served:
                    wanted.add(import_map[f"/static/{imported}"])
    # Every shipped file is used, and no file names a URL of another host (a CDN, a web font).
    assert {file.name for file in STATIC.iterdir() if file.name != "index.html"} == set(served)
    for name, text in {"index.html": index, **served}.items():
        assert re.findall(r"(?:https?:)?//[\w-]+(?:\.[\w-]+)+", text.replace(SVG_NAMESPACE, "")) == [], name


def test_the_registry_lists_the_models_and_datasets_for_the_admin_only(client: TestClient) -> None:
    assert client.get("/api/v1/registry").status_code == 401
    assert client.get("/api/v1/registry", headers={"Authorization": f"Bearer {WORKER}"}).status_code == 403

    registry = client.get("/api/v1/registry", headers={"Authorization": f"Bearer {ADMIN}"})

    assert registry.status_code == 200
    assert {"mlp", "cnn", "transfer"} <= set(registry.json()["models"])
    assert {"digits", "iris"} <= set(registry.json()["datasets"])
    assert registry.json()["dataset_formats"] == ["images", "npz"]
