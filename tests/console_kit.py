"""What the console's browser tests share: Debian's chromium under Playwright
(headless), a fresh profile per test, screenshots in $JEVONS_ARTIFACTS (or a
temporary folder), and the moves a user makes on the page."""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jevons.server.background import ServerThread

sync_api = pytest.importorskip("playwright.sync_api")

KEY = "sk-console-user"
CHROMIUM = os.environ.get("JEVONS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (./run.sh test installs Debian's)")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    out = os.environ.get("JEVONS_ARTIFACTS")
    path = Path(out) if out else tmp_path_factory.mktemp("console-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def page(browser):
    """A fresh browser profile (empty localStorage) per test; a script error fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    context.set_default_timeout(20_000)
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    yield p
    context.close()
    assert not errors, errors


@contextlib.contextmanager
def slow_steps(server: ServerThread, seconds: float) -> Iterator[None]:
    """Each engine step takes at least `seconds`: long enough to watch a stream and stop it."""
    core = server.app.state.jevons.engine.core
    core.fault_injector = lambda stage, req: time.sleep(seconds) if stage == "forward" else None
    try:
        yield
    finally:
        core.fault_injector = None


def wait_js(page, expression: str, timeout: float = 20.0) -> None:
    """Poll a JavaScript expression until it is true. (Playwright's wait_for_function
    evaluates its text with eval, which the console's Content-Security-Policy forbids.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"still false after {timeout} s: {expression}")
        time.sleep(0.02)


def open_console(page, srv: ServerThread, key: str | None = KEY) -> None:
    page.goto(srv.url + "/")
    page.wait_for_selector("body[data-ready=true]")
    if key is not None:
        page.click("#key-button")
        page.fill("#key-input", key)
        page.click("#key-save")


def wait_for_model(page) -> None:
    wait_js(page, "document.querySelector('#model').options.length > 0")


def settings(page, **values: str) -> None:
    if not page.is_visible("#system"):
        page.click("#settings summary")
    for name, value in values.items():
        page.fill(f"#{name}", value)
        page.dispatch_event(f"#{name}", "change")


def send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def last_stats(page) -> str:
    page.wait_for_selector(".msg.assistant:last-child .stats")
    return page.inner_text(".msg.assistant:last-child .stats")


def ask(page, srv: ServerThread, text: str, key: str | None = KEY, **fields: str) -> str:
    """Open the console, set the settings `fields`, send `text`, and return the answer's stats line."""
    open_console(page, srv, key)
    wait_for_model(page)
    settings(page, **fields)
    send(page, text)
    return last_stats(page)
