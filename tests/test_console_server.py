"""The web console's server side, without a browser: the page at / (and the
JSON index non-browsers get there), its static files, /metrics.json, and how
they pass the API-key check and the Host/Origin guard."""
from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from jevons.config import engine_config
from jevons.server.app import build_app
from jevons.server.background import ServerThread
from jevons.server.config import ServeConfig
from jevons.server.routes_console import CONSOLE_DIR

KEY = "sk-console"
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}  # what a browser sends


@pytest.fixture(scope="module")
def server(tiny_llama):
    config = ServeConfig(engine=engine_config(model=str(tiny_llama)), served_model_names=("tiny",), api_keys=(KEY,))
    with ServerThread(build_app(config)) as srv:
        yield srv


def assets() -> list[Path]:
    return sorted(p for p in CONSOLE_DIR.rglob("*") if p.is_file())


def test_the_page_needs_no_key_and_forbids_foreign_scripts(server):
    r = server.get("/", headers=HTML)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<title>jevons console</title>" in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp


def test_non_browsers_get_a_json_index(server):
    for accept in (None, "*/*", "application/json"):
        r = server.get("/", headers={"Accept": accept} if accept else {})
        assert r.status_code == 200, accept
        body = r.json()
        assert body["object"] == "jevons.server" and body["api"] == server.url + "/v1"
        assert body["docs"] == server.url + "/docs"


def test_every_asset_is_served_with_its_type_and_no_key(server):
    types = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
    for path in assets():
        rel = path.relative_to(CONSOLE_DIR).as_posix()
        r = server.get("/console/" + rel)
        assert r.status_code == 200, rel
        # A module script is refused by the browser unless its type is JavaScript.
        assert r.headers["content-type"].startswith(types[path.suffix]), (rel, r.headers["content-type"])


def test_assets_load_nothing_from_elsewhere_and_imports_resolve():
    """Offline: no URL to another host anywhere; every relative import exists."""
    for path in assets():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), path
        assert not re.search(r"@import|url\(\s*[\"']?https?:", text), path
        for target in re.findall(r"""from\s+["'](\.[^"']+)["']""", text):
            assert (path.parent / target).resolve().is_file(), (path, target)


def test_js_files_stay_small():
    for path in assets():
        if path.suffix == ".js":
            assert len(path.read_text(encoding="utf-8").splitlines()) <= 300, path


def test_the_open_console_prefix_is_no_way_around_the_key(server):
    for path in ("/console/../v1/models", "/console/%2e%2e/v1/models", "/console/nope.js"):
        r = httpx.get(server.url + path)
        assert r.status_code in (401, 404), (path, r.status_code)
        assert "data" not in r.text
    assert server.get("/v1/models").status_code == 401


def test_metrics_json_needs_the_key_and_has_the_engine_gauges(server):
    assert server.get("/metrics.json").status_code == 401
    key = {"Authorization": f"Bearer {KEY}"}
    httpx.post(server.url + "/v1/chat/completions", headers=key, timeout=60,  # a histogram shows once observed
               json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).raise_for_status()
    r = server.get("/metrics.json", headers=key)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "metrics" and body["time"] > 0
    metrics = body["metrics"]
    running = metrics["jevons:num_requests_running"]
    assert running["type"] == "gauge" and running["samples"][0]["value"] == 0
    ttft = metrics["jevons:time_to_first_token_seconds"]
    assert ttft["type"] == "histogram"
    assert any(s["labels"].get("le") == "+Inf" for s in ttft["samples"])  # +Inf is a label, not a value


def test_the_host_guard_still_applies_to_a_keyless_console(tiny_llama):
    config = ServeConfig(engine=engine_config(model=str(tiny_llama)), served_model_names=("tiny",))
    with ServerThread(build_app(config)) as srv:
        assert srv.get("/", headers=HTML).status_code == 200
        r = srv.get("/", headers={**HTML, "Host": "evil.example"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"
        # The page's own requests carry its origin: same origin passes.
        r = srv.get("/metrics.json", headers={"Origin": srv.url})
        assert r.status_code == 200
