"""Run the server in a background thread on a loopback port: for tests and
benchmarks that want a real HTTP server without a subprocess. The socket is
bound before uvicorn starts, so port 0 (any free port) has no race."""
from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI


class ServerThread:
    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, **uvicorn_kwargs: Any) -> None:
        self.app = app
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when
        # the protocol says TCP, and without it Nagle's algorithm holds each
        # response's body behind its head until the client's delayed ACK (~40 ms).
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        kwargs = {"log_level": "warning", "timeout_graceful_shutdown": 5, **uvicorn_kwargs}
        self.server = uvicorn.Server(uvicorn.Config(app, **kwargs))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="jevons-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, ready_timeout: float = 60.0, wait_for_model: bool = True) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + ready_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        if wait_for_model:
            self.wait_healthy(deadline - time.monotonic())
        return self

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = self.app.state.jevons
        while True:
            code, status, detail = state.health()
            if code == 200:
                return
            if status == "error" or time.monotonic() > deadline:
                raise RuntimeError(f"the model did not load: {status} {detail or ''}")
            time.sleep(0.02)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, **kw)

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
