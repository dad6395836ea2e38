"""Fail fast, fail clearly: each check on injected inputs, and `jevons serve`
as a process ending with one line on stderr, exit 2 and no traceback."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jevons.config import engine_config
from jevons.loader.presets import get_preset
from jevons.preflight import (
    GiB,
    PreflightError,
    check_device,
    check_memory,
    check_model,
    check_port,
    kv_cache_bytes,
    preflight_engine,
    weight_bytes,
)

ROOT = Path(__file__).resolve().parents[1]
SMOL = get_preset("smollm2-135m-instruct")


def test_missing_path_and_presets(tmp_path, tiny_llama):
    with pytest.raises(PreflightError, match="not found") as e:
        check_model(str(tmp_path / "nope"))
    assert "\n" not in str(e.value)
    with pytest.raises(PreflightError, match="config-only preset .*--load-format dummy"):
        check_model("deepseek-v3")
    with pytest.raises(PreflightError, match="config-only preset"):
        check_model("DeepSeek-R1-Distill-Qwen-7B", "auto")
    dummy = check_model("deepseek-v2-lite", "dummy", {"num_hidden_layers": 2})
    assert dummy.preset and dummy.config["num_hidden_layers"] == 2 and dummy.config["kv_lora_rank"] == 512
    real = check_model(str(tiny_llama))
    assert not real.preset and real.config["hidden_size"] > 0
    (tmp_path / "empty").mkdir()
    with pytest.raises(PreflightError, match="neither a config.json"):
        check_model(str(tmp_path / "empty"))


def test_device():
    check_device("cpu")
    with pytest.raises(PreflightError, match="--device cuda: .*run with --device cpu"):
        check_device("cuda", cuda_available=False)
    with pytest.raises(PreflightError, match="has 1 CUDA device"):
        check_device("cuda:3", cuda_available=True, cuda_count=1)
    check_device("cuda:0", cuda_available=True, cuda_count=1)
    with pytest.raises(PreflightError, match="unknown device"):
        check_device("gpu0")
    with pytest.raises(PreflightError, match="not supported"):
        check_device("meta")


def test_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PreflightError, match=f"port {port} on 127.0.0.1 is already in use"):
            check_port("127.0.0.1", port)
    check_port("127.0.0.1", port)  # free again
    with pytest.raises(PreflightError, match="not a TCP port"):
        check_port("127.0.0.1", 70000)
    with pytest.raises(PreflightError, match="--host"):
        check_port("no-such-host.invalid", 8000)


def test_weights_and_kv_estimates():
    fp32 = weight_bytes(SMOL, 4)
    assert 130e6 * 4 < fp32 < 140e6 * 4  # SmolLM2-135M: 134.5M parameters
    assert weight_bytes(SMOL, 4, "int4-compact") < weight_bytes(SMOL, 4, "int8-compact") < fp32
    assert weight_bytes(SMOL, 4, "int8") > fp32
    per_token = 46080  # fp32
    assert kv_cache_bytes(SMOL, 4, engine_config(), 64 * GiB, "cpu") == 64 * 512 * per_token  # the engine's default rule
    assert kv_cache_bytes(SMOL, 4, engine_config(kv_cache_bytes=10**8), 64 * GiB, "cpu") == 10**8
    assert kv_cache_bytes(SMOL, 4, engine_config(num_kv_blocks=10), 64 * GiB, "cpu") == 10 * 16 * per_token
    # an explicit size never beats max_num_seqs full-length sequences
    assert kv_cache_bytes(SMOL, 4, engine_config(kv_cache_bytes=10**15, max_num_seqs=1, max_model_len=16),
                          64 * GiB, "cpu") == (16 + 16) * per_token


def test_memory():
    check_memory(GiB, GiB, 3 * GiB, "this machine")
    with pytest.raises(PreflightError) as e:
        check_memory(3 * GiB, GiB, 2 * GiB, "cuda:0")
    msg = str(e.value)
    assert msg.startswith("not enough memory") and "~4.0 GiB" in msg and "cuda:0 has 2.0 GiB" in msg
    tiny = "MemTotal: 1000000 kB\nMemAvailable:     100000 kB\n"  # ~98 MiB
    with pytest.raises(PreflightError, match="not enough memory.* this machine has 0.1 GiB"):
        preflight_engine(engine_config(model="smollm2-135m-instruct", load_format="dummy", dtype="float32"),
                         meminfo=tiny)
    plenty = "MemAvailable: 100000000 kB\n"
    assert preflight_engine(engine_config(model="deepseek-v2-lite", load_format="dummy", dtype="bfloat16",
                                          hf_overrides={"num_hidden_layers": 2}), meminfo=plenty).preset


def serve(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "jevons.cli", "serve", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def one_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jevons serve: "), r.stderr
    return lines[0]


def test_serve_fails_with_one_line(tmp_path, tiny_llama):
    assert "not found" in one_line(serve("--model", str(tmp_path / "missing.gguf")))
    line = one_line(serve("--model", "deepseek-v3"))
    assert "config-only preset" in line and "--load-format dummy" in line
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert "already in use" in one_line(serve("--model", str(tiny_llama), "--port", str(port)))
    assert "not enough memory" in one_line(serve("--model", str(tiny_llama), "--kv-cache-bytes", "1e15",
                                                 "--max-num-seqs", "100000"))
    if not torch.cuda.is_available():
        assert "--device cuda" in one_line(serve("--model", str(tiny_llama), "--device", "cuda"))


def test_generate_checks_the_path_too(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "jevons.cli", "generate", "hi", "--model", str(tmp_path / "x")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("jevons generate: ")
