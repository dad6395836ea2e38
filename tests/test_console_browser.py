"""The web console in a real browser: Playwright drives Debian's chromium
(headless; `./run.sh test` installs it with apt when missing) against the real
server with a tiny model. Screenshots land in $JEVONS_ARTIFACTS (or a
temporary folder) as tiny-*.png."""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from jevons.config import engine_config
from jevons.server.app import build_app
from jevons.server.background import ServerThread
from jevons.server.config import ServeConfig

from console_kit import (  # noqa: F401  (fixtures: artifacts, browser, page)
    KEY, artifacts, ask, browser, last_stats, needs_chromium, open_console, page, send, settings, slow_steps,
    wait_for_model, wait_js,
)

ADMIN = "sk-console-admin"
HIT, MISS, OUT = 0.5, 2.0, 8.0  # per million tokens
pytestmark = needs_chromium


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    config = ServeConfig(engine=engine_config(model=str(tiny_llama)), served_model_names=("tiny",),
                         api_keys=(KEY,), admin_keys=(ADMIN,), price_input_hit=HIT, price_input_miss=MISS,
                         price_output=OUT, currency="USD", usd_per_hour=2.0,
                         ledger=str(tmp_path_factory.mktemp("ledger") / "ledger.sqlite"))
    with ServerThread(build_app(config)) as srv:
        yield srv


def test_an_answer_streams_in_and_shows_tokens_time_and_cost(page, server, artifacts):
    open_console(page, server)
    wait_for_model(page)
    settings(page, max_tokens="40", extra='{"ignore_eos": true}')
    with slow_steps(server, 0.01):
        send(page, "Explain **paged attention** in one line.")
        # Part of the answer is on screen while Stop is still offered: it streams.
        wait_js(page, "document.querySelector('.msg.assistant .body').textContent.length > 0"
                " && !document.querySelector('#stop').hidden")
        stats = last_stats(page)
    m = re.search(r"in (\d+) \(hit (\d+) / miss (\d+)\) · out 40 · TTFT \d+ ms · [\d.]+ tok/s · cost ([\d.]+) USD",
                  stats)
    assert m, stats
    prompt, hit, miss, cost = int(m[1]), int(m[2]), int(m[3]), float(m[4])
    assert hit + miss == prompt > 0
    assert cost == pytest.approx((hit * HIT + miss * MISS + 40 * OUT) / 1e6, rel=1e-3)
    assert page.is_hidden("#stop") and page.is_visible("#send")
    assert page.inner_text(".msg.user .body") == "Explain **paged attention** in one line."  # the user's text as typed
    page.screenshot(path=str(artifacts / "tiny-chat.png"))


def test_stop_aborts_the_request_on_the_server(page, server):
    core = server.app.state.jevons.engine.core
    open_console(page, server)
    wait_for_model(page)
    settings(page, extra='{"ignore_eos": true}')  # no max_tokens: it would run to the end of the context
    with slow_steps(server, 0.02):
        send(page, "Count to a thousand.")
        wait_js(page, "document.querySelector('.msg.assistant .body').textContent.length > 0")
        assert core.has_work()
        page.click("#stop")
        deadline = time.monotonic() + 60  # a bound on a hang, not a timing
        while core.has_work() and time.monotonic() < deadline:
            time.sleep(0.02)
    assert not core.has_work() and not core.scheduler.running
    assert core.num_free_blocks() == core.kv.num_blocks
    metrics = httpx.get(server.url + "/metrics.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert metrics["metrics"]["jevons:num_requests_running"]["samples"][0]["value"] == 0
    assert "stopped" in last_stats(page)
    assert page.is_visible("#send")


def test_key_and_conversation_survive_a_reload(page, server):
    stats = ask(page, server, "Remember this conversation.", max_tokens="4", system="You are terse.")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    wait_for_model(page)  # the key came from localStorage: /v1/models answered
    assert page.is_hidden("#alert")
    assert page.inner_text(".msg.user .body") == "Remember this conversation."
    assert last_stats(page) == stats
    assert page.inner_text("#conversations") == "Remember this conversation.\n×"
    assert page.input_value("#system") == "You are terse."  # the settings too


def test_a_wrong_key_gets_the_servers_message(page, server, artifacts):
    open_console(page, server, key="sk-wrong")
    page.wait_for_selector("#alert:not([hidden])")
    assert "incorrect API key provided" in page.inner_text("#alert")
    send(page, "Hello?")
    page.wait_for_selector(".msg.assistant .error")
    assert page.inner_text(".msg.assistant .error") == "incorrect API key provided"
    page.screenshot(path=str(artifacts / "tiny-wrong-key.png"))


def test_regenerate_and_edit_and_resend(page, server):
    ask(page, server, "First question", max_tokens="3", extra='{"ignore_eos": true}')
    page.click(".msg.assistant button:has-text('Regenerate')")
    page.wait_for_selector("#stop", state="hidden")
    last_stats(page)
    assert page.locator(".msg").count() == 2  # the answer was replaced, not added
    page.click(".msg.user button:has-text('Edit')")
    page.fill(".msg.user .edit textarea", "Second question")
    page.click(".msg.user .edit button[type=submit]")
    page.wait_for_selector(".msg.assistant:last-child .stats")
    assert page.locator(".msg").count() == 2
    assert page.inner_text(".msg.user .body") == "Second question"


def test_model_text_never_becomes_html(page, server):
    open_console(page, server, key=None)
    html = page.evaluate("""async () => {
        const { renderMarkdown } = await import('/console/js/markdown.js');
        const box = document.createElement('div');
        box.append(renderMarkdown('<img src=x onerror="window.pwned=1"> **bold** and `<b>code</b>`\\n\\n' +
            '```html\\n<script>window.pwned=2</script>\\n```\\n\\n- [a link](https://example.org)\\n' +
            '- [bad](javascript:window.pwned=3)'));
        document.body.append(box);
        await new Promise((r) => setTimeout(r, 50));
        return {pwned: window.pwned ?? null, img: box.querySelectorAll('img,script').length,
                strong: box.querySelector('strong')?.textContent, code: box.querySelector('p code')?.textContent,
                pre: box.querySelector('pre code.language-html')?.textContent,
                links: [...box.querySelectorAll('a')].map((a) => a.href), text: box.textContent};
    }""")
    assert html["pwned"] is None and html["img"] == 0
    assert html["strong"] == "bold" and html["code"] == "<b>code</b>"
    assert html["pre"] == "<script>window.pwned=2</script>"
    assert html["links"] == ["https://example.org/"]
    assert "[bad](javascript:window.pwned=3)" in html["text"]


def load(server: ServerThread, stop: threading.Event) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 24,
            "ignore_eos": True}
    while not stop.is_set():
        httpx.post(server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                   timeout=60)


def test_the_dashboard_fills_with_data_under_load(page, server, artifacts):
    open_console(page, server)
    page.click("#tab-dashboard")
    page.wait_for_selector("[data-chart=requests][data-filled=true]")  # the first sample is in
    stop = threading.Event()
    worker = threading.Thread(target=load, args=(server, stop))
    with slow_steps(server, 0.005):
        worker.start()
        try:
            for chart in ("tokens", "ttft", "itl", "cost", "prefix"):
                page.wait_for_selector(f"[data-chart={chart}][data-filled=true]")
        finally:
            stop.set()
            worker.join()
    assert float(page.inner_text("[data-chart=tokens] .now").replace(",", "")) >= 0
    assert page.inner_text("[data-chart=cost] .now").startswith("$")
    page.screenshot(path=str(artifacts / "tiny-dashboard.png"), full_page=True)
    page.reload()  # the page is in the URL (#dashboard)
    page.wait_for_selector("#page-dashboard:not([hidden])")
    page.click("#tab-chat")
    assert page.url == server.url + "/" and page.is_hidden("#page-dashboard")


def test_an_admin_sees_spend_by_key_and_downloads_it(page, server):
    httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
               json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).raise_for_status()
    open_console(page, server, key=ADMIN)
    page.click("#tab-dashboard")
    page.click("#usage-form button[type=submit]")
    page.wait_for_selector("#usage-table tr:nth-child(2)")
    assert page.inner_text("#usage-table tr:first-child").split("\t")[:3] == ["key", "model", "currency"]
    with page.expect_download() as info:
        page.click("#usage-csv")
    text = Path(info.value.path()).read_text()
    assert text.splitlines()[0].startswith("key,model,currency")
    # A user key may not read the ledger: the server's 403 is shown.
    page.click("#key-button")
    page.fill("#key-input", KEY)
    page.click("#key-save")
    page.click("#usage-form button[type=submit]")
    wait_js(page, "document.querySelector('#usage-message').textContent.includes('admin key')")


def test_every_control_is_labelled_and_escape_stops(page, server):
    open_console(page, server)
    wait_for_model(page)
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button')]
        .filter((el) => !(el.labels?.length || el.getAttribute('aria-label') || el.textContent.trim()))
        .map((el) => el.outerHTML)""")
    assert unlabelled == []
    core = server.app.state.jevons.engine.core
    settings(page, extra='{"ignore_eos": true}')
    with slow_steps(server, 0.02):
        send(page, "Go on for ever.")
        wait_js(page, "document.querySelector('.msg.assistant .body').textContent.length > 0")
        page.keyboard.press("Escape")
        assert "stopped" in last_stats(page)
    deadline = time.monotonic() + 60  # a bound on a hang, not a timing
    while core.has_work() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not core.has_work()


def test_a_phone_width_screen_needs_no_sideways_scrolling(browser, server, artifacts):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    open_console(page, server)
    wait_for_model(page)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(artifacts / "tiny-phone.png"))
    context.close()


@pytest.fixture(scope="module")
def reasoner(tmp_path_factory):
    from test_server_reasoning import build_reasoning_model  # a tiny model whose template opens <think>

    path = build_reasoning_model(tmp_path_factory.mktemp("console-reasoner"))
    app = build_app(ServeConfig(engine=engine_config(model=str(path)), served_model_names=("r1",)))
    with ServerThread(app) as srv:
        yield srv


def test_a_reasoning_models_thinking_is_shown_apart_with_its_token_count(page, reasoner, artifacts):
    # The thinking budget: the server closes the think block after 5 tokens, then the answer follows.
    stats = ask(page, reasoner, "What is 2 + 2?", key=None, max_tokens="12", thinking="5", extra='{"ignore_eos": true}')
    thinking = re.search(r"thinking (\d+)", stats)
    assert thinking, stats
    summary = page.inner_text(".msg.assistant details.thinking summary")
    assert summary == f"Thought · {thinking[1]} tokens"
    assert 0 < int(thinking[1]) <= 6  # the budget, and the </think> it forced
    details = page.locator(".msg.assistant details.thinking")
    assert not details.evaluate("d => d.open")  # folded once the answer is done
    reasoning = details.evaluate("d => d.querySelector('.text').textContent")
    assert reasoning and reasoning not in page.inner_text(".msg.assistant .body")
    page.click(".msg.assistant details.thinking summary")  # unfolds by click (a <details>: keyboard too)
    assert details.evaluate("d => d.open")
    page.screenshot(path=str(artifacts / "tiny-thinking.png"))


def test_json_mode_and_tool_calls_are_shown_as_such(page, server):
    ask(page, server, "Answer in JSON.", max_tokens="16", extra='{"response_format": {"type": "json_object"}}')
    assert page.locator(".msg.assistant pre.json code.language-json").count() == 1
    # Tool calls as a streamed answer carries them (OpenAI's shape), merged and rendered.
    shown = page.evaluate("""async () => {
        const { renderMessage } = await import('/console/js/message_view.js');
        const li = renderMessage({role: 'assistant', content: '',
            toolCalls: [{id: 'call_1', name: 'get_weather', arguments: '{"city":"Paris"}'}]});
        return {name: li.querySelector('.tool-call code').textContent,
                args: li.querySelector('.tool-call pre.json').textContent};
    }""")
    assert shown == {"name": "get_weather", "args": '{\n  "city": "Paris"\n}'}


def test_the_page_waits_for_a_loading_model(page, tiny_llama):
    from jevons.server.state import default_engine_factory

    config = ServeConfig(engine=engine_config(model=str(tiny_llama)), served_model_names=("tiny",))
    loaded = threading.Event()
    build = default_engine_factory(config)

    def slow_load():
        loaded.wait(30)
        return build()

    srv = ServerThread(build_app(config, slow_load)).start(wait_for_model=False)
    try:
        open_console(page, srv, key=None)
        page.wait_for_selector("#alert:not([hidden])")
        assert "still loading" in page.inner_text("#alert")
        loaded.set()
        wait_for_model(page)  # asked again on its own
        page.wait_for_selector("#alert", state="hidden")
    finally:
        loaded.set()
        srv.stop()


def test_dashboard_percentiles_and_rates_from_snapshots(page, server):
    """The dashboard's arithmetic on /metrics.json snapshots, as Prometheus's histogram_quantile does it."""
    open_console(page, server, key=None)
    got = page.evaluate("""async () => {
        const m = await import('/console/js/metrics.js');
        const snap = (time, counts, tokens) => ({time, metrics: {
            'jevons:time_to_first_token_seconds': {type: 'histogram', samples: Object.entries(counts).map(
                ([le, value]) => ({name: 'jevons:time_to_first_token_seconds_bucket', labels: {le}, value}))},
            'jevons:generation_tokens': {type: 'counter', samples: [
                {name: 'jevons:generation_tokens_total', labels: {}, value: tokens}]},
        }});
        const a = snap(10, {'0.1': 2, '0.2': 2, '+Inf': 2}, 100);
        const b = snap(12, {'0.1': 7, '0.2': 12, '+Inf': 13}, 160);
        const q = (prev, p) => m.quantile(prev, b, 'time_to_first_token_seconds', p);
        return {p50_all: q(null, 0.5), p50: q(a, 0.5), p95: q(a, 0.95), rate: m.rate(a, b, 'generation_tokens'),
                none: m.quantile(b, b, 'time_to_first_token_seconds', 0.5)};
    }""")
    # Between a and b: 5 observations <= 0.1 s, 5 in (0.1, 0.2], 1 above 0.2 s.
    assert got["p50"] == pytest.approx(0.1 + 0.1 * (5.5 - 5) / 5)
    assert got["p95"] == pytest.approx(0.2)  # rank 10.45 of 11 lies beyond the last finite bucket: its bound
    assert got["p50_all"] == pytest.approx(0.1 * 6.5 / 7)
    assert got["rate"] == pytest.approx(30.0) and got["none"] is None
