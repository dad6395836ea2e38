"""GET /docs works offline: one self-contained page, no script or stylesheet
from a CDN, listing every route from the app's own OpenAPI schema."""
from __future__ import annotations

import re

from fastapi.testclient import TestClient

from jevons.server.app import build_app
from jevons.server.config import ServeConfig


def client(**config) -> TestClient:
    # No `with`: the lifespan (which loads the engine) never runs; /docs needs none.
    return TestClient(build_app(ServeConfig(**config)), base_url="http://jevons.local:8123")


def test_docs_page_has_no_external_urls():
    c = client()
    r = c.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    hosts = set(re.findall(r"(?i)(?:https?:)?//([a-z0-9.\-]+(?::\d+)?)", page))
    assert hosts <= {"jevons.local:8123"}, hosts  # only this server itself
    assert "<script" not in page and 'rel="stylesheet"' not in page and "cdn" not in page.lower()
    assert "http://jevons.local:8123/v1" in page  # the description's HOST:PORT, filled in


def test_docs_page_lists_every_route():
    c = client()
    page = c.get("/docs").text
    spec = c.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        for method in ops:
            assert f'<span class="m">{method}</span> <code>{path}</code>' in page, (method, path)
    assert "<code>messages</code>" in page and "ChatCompletionRequest" in page  # request fields
    assert "/docs" not in spec["paths"]


def test_docs_open_without_a_key_and_redoc_points_there():
    c = client(api_keys=("sk-x",))
    assert c.get("/docs").status_code == 200
    assert c.get("/v1/models").status_code == 401
    r = c.get("/redoc", follow_redirects=False)
    assert r.status_code in (302, 307) and r.headers["location"] == "docs"
