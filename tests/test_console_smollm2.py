"""The console against the default model (the embedded SmolLM2 GGUF, ~10 s to
load on CPU): a real question, a real answer streamed, and its cost line. Its
screenshots are the README's (JEVONS_ARTIFACTS=docs/images)."""
from __future__ import annotations

import os
import re
import threading

import httpx
import pytest

from jevons.config import engine_config
from jevons.server.app import build_app
from jevons.server.background import ServerThread
from jevons.server.config import ServeConfig

from console_kit import (  # noqa: F401  (fixtures: artifacts, browser, page)
    artifacts, browser, last_stats, needs_chromium, page, send, settings, wait_for_model, wait_js,
)

MODEL = "smollm2-135m-instruct"
pytestmark = needs_chromium


@pytest.fixture(scope="module")
def server():
    from jevons.loader.resolve import ModelNotFoundError, resolve_model

    try:
        resolve_model(MODEL)
    except ModelNotFoundError as e:
        pytest.skip(str(e))
    # Prices as an operator would set them (per million tokens), and the machine's cost.
    cfg = ServeConfig(engine=engine_config(model=MODEL, num_kv_blocks=64, max_model_len=1024),
                      price_input_hit=0.014, price_input_miss=0.14, price_output=0.28, usd_per_hour=0.05)
    with ServerThread(build_app(cfg)) as srv:
        yield srv


def test_the_default_model_answers_in_the_console_with_its_cost(page, server, artifacts):
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready=true]")
    wait_for_model(page)
    assert page.input_value("#model") == MODEL
    settings(page, temperature="0", max_tokens="40")
    page.click("#settings summary")  # fold the settings again for the picture
    send(page, "What is the capital of France? Answer in one sentence.")
    wait_js(page, "document.querySelector('.msg.assistant .body').textContent.length > 0")
    stats = last_stats(page)
    assert "Paris" in page.inner_text(".msg.assistant .body")
    assert re.search(r"in \d+ \(hit \d+ / miss \d+\) · out \d+ · TTFT \d+ ms · [\d.]+ tok/s · cost [\d.]+ USD",
                     stats), stats
    # The same question again: its prompt is now a prefix-cache hit, and cheaper.
    send(page, "And of Italy?")
    stats = last_stats(page)
    hit = int(re.search(r"hit (\d+)", stats)[1])
    assert hit > 0, stats
    page.screenshot(path=str(artifacts / "console-chat.png"))


def _load(url: str, stop: threading.Event) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a haiku about tokens."}],
            "max_tokens": 32, "temperature": 0}
    while not stop.is_set():
        httpx.post(url + "/v1/chat/completions", json=body, timeout=120)


@pytest.mark.skipif(not os.environ.get("JEVONS_ARTIFACTS"), reason="makes the README's picture; the tiny-model "
                    "test checks the dashboard")
def test_the_dashboard_under_load(page, server, artifacts):
    page.goto(server.url + "/#dashboard")
    page.wait_for_selector("[data-chart=requests][data-filled=true]")
    stop = threading.Event()
    workers = [threading.Thread(target=_load, args=(server.url, stop)) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        for chart in ("tokens", "ttft", "itl", "cost"):
            page.wait_for_selector(f"[data-chart={chart}][data-filled=true]", timeout=40_000)
        wait_js(page, "document.querySelectorAll('[data-chart=tokens] polyline')[0]"
                      ".getAttribute('points').split(' ').length >= 8", timeout=60)
    finally:
        stop.set()
        for w in workers:
            w.join()
    page.screenshot(path=str(artifacts / "console-dashboard.png"), full_page=True)
