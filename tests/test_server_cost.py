"""Cost in the server: usage.cost on every response (streaming too), one ledger
row per finished request (aborted ones included, committed before the answer),
GET /v1/usage for admin keys only, and the serving-cost gauges on /metrics."""
from __future__ import annotations

import csv
import io
import json
import re
import time
from decimal import Decimal

import httpx
import pytest

from jevons.config import engine_config
from jevons.cost.ledger import Ledger
from jevons.server.app import build_app
from jevons.server.auth import key_id
from jevons.server.background import ServerThread
from jevons.server.config import ServeConfig

PRICES = """
[machine]
usd_per_hour = 3.6

[models.tiny]
currency = "EUR"
input_cache_hit = 0.5
input_cache_miss = 2.0
output = 8.0
"""
HIT, MISS, OUT = 0.5, 2.0, 10.0  # --price-output 10 beats the file's 8
LONG_PROMPT = "Paged attention keeps the KV cache in fixed-size blocks. " * 4
KEY, OTHER, ADMIN = "sk-alice", "sk-bob", "sk-admin"


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory):
    return tmp_path_factory.mktemp("ledger") / "ledger.sqlite"


@pytest.fixture(scope="module")
def server(tiny_llama, ledger_path, tmp_path_factory):
    prices = tmp_path_factory.mktemp("prices") / "prices.toml"
    prices.write_text(PRICES)
    config = ServeConfig(engine=engine_config(model=str(tiny_llama)), served_model_names=("tiny",),
                         prices=str(prices), price_output=OUT, ledger=str(ledger_path),
                         api_keys=(KEY, OTHER), admin_keys=(ADMIN,))
    with ServerThread(build_app(config)) as srv:
        yield srv


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def post(server, path: str, body: dict, key: str = KEY, timeout: float = 60) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=auth(key), timeout=timeout)


def rows(ledger_path) -> dict:
    """The ledger as another process would see it: a fresh connection to the file."""
    with Ledger(ledger_path) as led:
        return {e.request_id: e for e in led.entries()}


def expected_cost(usage: dict) -> dict:
    hit = usage["prompt_tokens_details"]["cached_tokens"]
    miss = usage["prompt_tokens"] - hit
    out = usage["completion_tokens"]
    parts = {"input_cache_hit": hit * HIT / 1e6, "input_cache_miss": miss * MISS / 1e6, "output": out * OUT / 1e6}
    return {"currency": "EUR", **{k: pytest.approx(v) for k, v in parts.items()},
            "total": pytest.approx(sum(parts.values()))}


def test_chat_usage_cost_and_ledger_row(server, ledger_path):
    body = {"model": "tiny", "messages": [{"role": "user", "content": LONG_PROMPT}], "max_tokens": 4}
    before = time.time()
    first = post(server, "/v1/chat/completions", body).json()
    second = post(server, "/v1/chat/completions", body).json()  # same prompt: a prefix-cache hit
    for r in (first, second):
        assert r["usage"]["cost"] == expected_cost(r["usage"])
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert second["usage"]["cost"]["input_cache_hit"] > 0
    # The row was committed before the response was sent: it is on disk now.
    row = rows(ledger_path)[second["id"]]
    u = second["usage"]
    assert (row.key_id, row.model, row.currency, row.finish_reason) == (key_id(KEY), "tiny", "EUR", "length")
    assert (row.prompt_tokens, row.cached_tokens, row.completion_tokens) == (
        u["prompt_tokens"], u["prompt_tokens_details"]["cached_tokens"], u["completion_tokens"])
    assert row.billed == pytest.approx(u["cost"]["total"]) and row.latency_s > 0
    assert before <= row.created <= time.time()  # unix time, stamped while the request ran


def sse_events(r: httpx.Response) -> list:
    out = []
    for line in r.iter_lines():
        if line.startswith("data: "):
            out.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
    return out


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/completions", {"prompt": "The quick brown fox", "n": 2}),
])
def test_streaming_usage_chunk_has_cost_and_row_precedes_done(server, ledger_path, path, body):
    body = {"model": "tiny", "max_tokens": 5, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}, **body}
    with httpx.stream("POST", server.url + path, json=body, headers=auth(OTHER), timeout=60) as r:
        events = []
        for line in r.iter_lines():
            if line == "data: [DONE]":
                # The row is committed before [DONE] is written: check before reading on.
                assert events[-1]["id"] in rows(ledger_path)
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
    usage = events[-1]["usage"]
    assert events[-1]["choices"] == [] and usage["cost"] == expected_cost(usage)
    row = rows(ledger_path)[events[-1]["id"]]
    assert row.key_id == key_id(OTHER) and row.completion_tokens == usage["completion_tokens"]
    assert row.finish_reason == "length"


def test_aborted_requests_are_recorded(server, ledger_path):
    body = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 450, "ignore_eos": True}
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, headers=auth(KEY),
                      timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                rid = json.loads(line[6:])["id"]
                break  # leave mid-stream
    before = set(rows(ledger_path))
    with pytest.raises(httpx.TimeoutException):  # a non-streaming client that gives up
        post(server, "/v1/completions", body, timeout=0.3)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = rows(ledger_path)
        new = [e for k, e in now.items() if k not in before and k != rid]
        if rid in now and new:
            break
        time.sleep(0.05)
    assert now[rid].finish_reason == "abort" and now[rid].completion_tokens < 450
    assert [e.finish_reason for e in new] == ["abort"] and new[0].billed >= 0


def test_usage_endpoint_auth(server):
    assert server.get("/v1/usage").status_code == 401
    assert server.get("/v1/usage", headers=auth("sk-wrong")).status_code == 401
    r = server.get("/v1/usage", headers=auth(KEY))  # a valid key, not an admin's
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    assert server.get("/v1/usage", headers=auth(ADMIN)).status_code == 200
    # The admin key also passes the API-key check on the other routes.
    assert post(server, "/v1/completions", {"model": "tiny", "prompt": "a", "max_tokens": 1}, key=ADMIN).status_code == 200


def test_usage_endpoint_json_and_csv(server, ledger_path):
    post(server, "/v1/completions", {"model": "tiny", "prompt": "a", "max_tokens": 2})
    r = server.get("/v1/usage", headers=auth(ADMIN), params={"group_by": "key,model,day"})
    data = r.json()
    assert data["group_by"] == ["key", "model", "day"]
    by_key = {row["key"]: row for row in data["data"]}
    assert {key_id(KEY), key_id(OTHER)} <= set(by_key)
    mine = by_key[key_id(KEY)]
    assert mine["model"] == "tiny" and mine["currency"] == "EUR" and re.fullmatch(r"\d{4}-\d\d-\d\d", mine["day"])
    entries = [e for e in rows(ledger_path).values() if e.key_id == key_id(KEY)]
    assert mine["requests"] == len(entries)
    assert mine["billed"] == pytest.approx(sum(e.billed for e in entries))
    assert "serving_usd_per_million_output" in mine  # the server has a machine cost

    r = server.get("/v1/usage", headers=auth(ADMIN), params={"group_by": "model", "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert [t["model"] for t in table] == ["tiny"] and int(table[0]["requests"]) == len(rows(ledger_path))

    future = server.get("/v1/usage", headers=auth(ADMIN), params={"since": "2999-01-01"}).json()
    assert future["data"] == []
    for params in ({"group_by": "week"}, {"since": "yesterday"}, {"format": "xml"}):
        assert server.get("/v1/usage", headers=auth(ADMIN), params=params).status_code == 400


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_metrics_serving_cost(server):
    post(server, "/v1/completions", {"model": "tiny", "prompt": "a", "max_tokens": 3})
    text = server.get("/metrics").text
    assert metric(text, "jevons:machine_cost_usd_per_hour") == 3.6  # from the price file
    spent = metric(text, "jevons:serving_cost_usd_total")
    tokens = metric(text, "jevons:generation_tokens_total")
    per_m = metric(text, "jevons:serving_cost_usd_per_million_output_tokens")
    assert per_m > 0 and per_m == pytest.approx(spent / tokens * 1e6, rel=0.05)
    assert 'jevons:billed_amount_total{currency="EUR",model_name="tiny"}' in text


def test_no_prices_no_cost_and_no_ledger(tiny_llama):
    """The defaults: usage keeps OpenAI's shape, /v1/usage has nothing to read."""
    app = build_app(ServeConfig(engine=engine_config(model=str(tiny_llama)), served_model_names=("tiny",),
                                admin_keys=(ADMIN,)))
    with ServerThread(app) as srv:
        r = post(srv, "/v1/completions", {"model": "tiny", "prompt": "a", "max_tokens": 2}, key="anything")
        assert r.status_code == 200 and "cost" not in r.json()["usage"]
        assert srv.get("/v1/usage").status_code == 401
        assert srv.get("/v1/usage", headers=auth("sk-other")).status_code == 401
        r = srv.get("/v1/usage", headers=auth(ADMIN))
        assert r.status_code == 404 and r.json()["error"]["code"] == "ledger_disabled"
        # $0/hour by default: the figure is there, and it is zero.
        assert metric(srv.get("/metrics").text, "jevons:serving_cost_usd_per_million_output_tokens") == 0


def test_reasoning_tokens_are_billed_as_output(tmp_path):
    from test_server_reasoning import build_reasoning_model

    path = build_reasoning_model(tmp_path / "r1")
    db = tmp_path / "ledger.sqlite"
    app = build_app(ServeConfig(engine=engine_config(model=str(path)), served_model_names=("r1",), ledger=str(db),
                                price_input_hit=HIT, price_input_miss=MISS, price_output=OUT, currency="EUR"))
    with ServerThread(app) as srv:
        body = {"model": "r1", "messages": [{"role": "user", "content": "2 + 2?"}], "max_tokens": 6}
        r = post(srv, "/v1/chat/completions", body, key="unchecked").json()
    usage = r["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] > 0  # the template opens <think>
    assert usage["cost"] == expected_cost(usage)  # output = all completion tokens, thinking included
    row = rows(db)[r["id"]]
    assert row.key_id == "anonymous"  # the server checks no keys, so it names none
    assert (row.reasoning_tokens, row.completion_tokens) == (
        usage["completion_tokens_details"]["reasoning_tokens"], usage["completion_tokens"])


def exact(amount: float) -> Decimal:
    """The decimal a JSON number prints as; binary-float noise shows up as
    more than 10 places (2.2340000000000003e-05)."""
    d = Decimal(repr(amount))
    assert d.as_tuple().exponent >= -10, amount
    return d


def test_money_is_exact_in_responses_ledger_and_usage(server, ledger_path):
    for n in range(3):
        r = post(server, "/v1/completions", {"model": "tiny", "prompt": "a b" * (n + 1), "max_tokens": 3}, key=OTHER)
        cost = r.json()["usage"]["cost"]
        assert exact(cost["total"]) == exact(cost["input_cache_hit"]) + exact(cost["input_cache_miss"]) + exact(
            cost["output"])
    entries = [e for e in rows(ledger_path).values() if e.key_id == key_id(OTHER)]
    data = server.get("/v1/usage", headers=auth(ADMIN), params={"group_by": "key"}).json()["data"]
    billed = {row["key"]: row["billed"] for row in data}[key_id(OTHER)]
    assert exact(billed) == sum(exact(e.billed) for e in entries)
