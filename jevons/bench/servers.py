"""Start, health-check and stop the servers a benchmark launches itself
(`jevons serve`, llama.cpp's `llama-server`), always on a loopback port.

A benchmark owns the processes it starts: it stops each one (SIGTERM, then
SIGKILL after a grace period) before starting the next, so two engines never
compete for the same cores during a measurement."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, name: str, cmd: list[str], port: int, env: dict[str, str] | None = None,
                 startup_timeout_s: float = 600.0, health_path: str = "/health") -> None:
        self.name = name
        self.cmd = cmd
        self.port = port
        self.env = env
        self.startup_timeout_s = startup_timeout_s
        self.health_path = health_path
        self.proc: subprocess.Popen[bytes] | None = None
        fd, path = tempfile.mkstemp(prefix=f"jevons-bench-{name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def start(self) -> "ServerProcess":
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         stdin=subprocess.DEVNULL)
        finally:
            log.close()  # the child holds its own copy
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Poll /health until 200 (llama-server answers 503 while loading);
        fail fast if the process dies, and give up after startup_timeout_s."""
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode} while starting; "
                                       f"log {self.log_path}:\n{self.log_tail()}")
                try:
                    if client.get(self.base_url + self.health_path).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"{self.name} not healthy after {self.startup_timeout_s:.0f}s; "
                           f"log {self.log_path}:\n{self.log_tail()}")

    def stop(self, grace_s: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def jevons_server(engine_flags: list[str], threads: int, port: int | None = None,
                  startup_timeout_s: float = 600.0) -> ServerProcess:
    from jevons.bench.threads import thread_env

    port = port or free_port()
    cmd = [sys.executable, "-m", "jevons.cli", "--log-level", "WARNING", "serve", *engine_flags,
           "--host", LOOPBACK, "--port", str(port), "--uvicorn-log-level", "warning"]
    return ServerProcess("jevons", cmd, port, env=thread_env(threads), startup_timeout_s=startup_timeout_s)


def llama_server(bin_dir: Path, gguf: Path, parallel: int, ctx_per_slot: int, threads: int,
                 port: int | None = None, startup_timeout_s: float = 600.0) -> ServerProcess:
    """llama-server with `parallel` slots, each with room for ctx_per_slot tokens
    (-c is the total that the slots split), on the same thread count as jevons."""
    from jevons.bench.peers import repack_works

    port = port or free_port()
    cmd = [str(bin_dir / "llama-server"), "-m", str(gguf), "--host", LOOPBACK, "--port", str(port),
           "-np", str(parallel), "-c", str(parallel * ctx_per_slot), "-t", str(threads), "-tb", str(threads)]
    if not repack_works(bin_dir, gguf, threads):
        cmd.append("--no-repack")
    return ServerProcess("llama-server", cmd, port, startup_timeout_s=startup_timeout_s)
