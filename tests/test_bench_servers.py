"""Launched servers: started on loopback, health-polled, stopped; a server that
dies while starting is reported with its log, never waited on forever."""
from __future__ import annotations

import sys

import httpx
import pytest

from jevons.bench.servers import ServerProcess, free_port, llama_server


def test_server_process_lifecycle(tmp_path) -> None:
    (tmp_path / "health").write_text("ok")
    port = free_port()
    srv = ServerProcess("http", [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                 "--directory", str(tmp_path)], port, startup_timeout_s=30)
    with srv:
        assert srv.base_url == f"http://127.0.0.1:{port}"
        assert httpx.get(srv.base_url + "/health", trust_env=False).text == "ok"
    assert srv.proc is not None and srv.proc.poll() is not None  # stopped


def test_server_that_dies_is_reported() -> None:
    srv = ServerProcess("dies", [sys.executable, "-c", "print('no model here'); raise SystemExit(3)"], free_port(),
                        startup_timeout_s=30)
    with pytest.raises(RuntimeError, match="exited with 3(.|\n)*no model here"):
        srv.start()


def test_llama_server_command(tmp_path) -> None:
    srv = llama_server(tmp_path, tmp_path / "m.gguf", parallel=8, ctx_per_slot=768, threads=2, port=1234)
    cmd = srv.cmd
    assert cmd[0] == str(tmp_path / "llama-server")
    assert cmd[cmd.index("-np") + 1] == "8" and cmd[cmd.index("-c") + 1] == str(8 * 768)
    assert cmd[cmd.index("-t") + 1] == "2" and cmd[cmd.index("--host") + 1] == "127.0.0.1"
