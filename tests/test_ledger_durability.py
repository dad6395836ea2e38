"""A real `jevons serve --ledger` process, killed with SIGKILL while clients
are busy: every request that got its response is in the ledger."""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import httpx

from jevons.cost.ledger import Ledger
from jevons.server.auth import key_id

ANSWERED_BEFORE_KILL = 24
CLIENTS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stdout.read().decode()
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not become healthy"
        time.sleep(0.1)


def test_kill_9_loses_no_answered_request(tiny_llama, tmp_path):
    db = tmp_path / "ledger.sqlite"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "jevons.cli", "serve", "--model", str(tiny_llama), "--port", str(port),
           "--served-model-name", "tiny", "--ledger", str(db), "--api-key", "sk-test",
           "--price-input-hit", "0.14", "--price-input-miss", "0.55", "--price-output", "2.19",
           "--uvicorn-log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    answered: list[tuple[str, dict]] = []  # (response id, usage) of every 200 received
    lock = threading.Lock()
    stop = threading.Event()

    def client(i: int) -> None:
        body = {"model": "tiny", "prompt": f"The quick brown fox {i}", "max_tokens": 8, "ignore_eos": True}
        with httpx.Client(base_url=url, headers={"Authorization": "Bearer sk-test"}, timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post("/v1/completions", json=body)
                except httpx.TransportError:  # the server died under us: not answered
                    return
                assert r.status_code == 200, r.text
                with lock:
                    answered.append((r.json()["id"], r.json()["usage"]))

    try:
        wait_healthy(proc, url)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(answered) < ANSWERED_BEFORE_KILL and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # requests are in flight: some mid-commit, most likely
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert len(answered) >= ANSWERED_BEFORE_KILL

    with Ledger(db) as led:  # reopening replays the WAL
        stored = {e.request_id: e for e in led.entries()}
    missing = [rid for rid, _ in answered if rid not in stored]
    assert missing == []
    for rid, usage in answered:  # and the row says what the response said
        e = stored[rid]
        assert (e.prompt_tokens, e.completion_tokens, e.key_id) == (usage["prompt_tokens"], 8, key_id("sk-test"))
        assert e.finish_reason == "length" and abs(e.billed - usage["cost"]["total"]) < 1e-9
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
