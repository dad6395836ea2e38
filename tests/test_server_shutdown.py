"""`jevons serve` as a process: SIGTERM stops accepting, lets the in-flight
stream finish, and exits 0."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_drains_and_exits_zero(tiny_llama):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "jevons.cli", "serve", "--model", str(tiny_llama), "--port", str(port),
           "--served-model-name", "tiny", "--shutdown-timeout", "30", "--uvicorn-log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.1)

        lines: list[str] = []
        first = threading.Event()

        def consume() -> None:
            body = {"model": "tiny", "prompt": "The quick", "max_tokens": 300, "ignore_eos": True, "stream": True}
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if line:
                        lines.append(line)
                    first.set()

        reader = threading.Thread(target=consume)
        reader.start()
        assert first.wait(30)
        proc.send_signal(signal.SIGTERM)
        at_signal = len(lines)
        reader.join(60)
        assert not reader.is_alive()
        # The in-flight stream ran to its end.
        assert lines[-1] == "data: [DONE]" and any('"finish_reason":"length"' in x for x in lines)
        assert len(lines) > at_signal + 10  # most of it arrived after the signal
        assert proc.wait(30) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
