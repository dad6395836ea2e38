"""`jevons bench kernels` on CPU: the parser, both roofs, every case's small
shapes on the torch backend, and two Triton cases under the interpreter."""
from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton import

import pytest

from jevons.bench.kernels import CASES, add_kernels_parser


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_kernels_parser(p.add_subparsers())
    return p.parse_args(["kernels", "--device", "cpu", "--iters", "1", "--warmup", "0", *argv])


def test_triton_bench_kernels_torch_backend(tmp_path, capsys):
    out = tmp_path / "k.json"
    args = _parse(["--backend", "torch", "--json", str(out)])
    assert args.func(args) == 0
    data = json.loads(out.read_text())
    assert data["preset"] == "small" and data["copy_gb_s"] > 0 and data["matmul_tflop_s"] > 0
    assert [r["kernel"] for r in data["results"]] == list(CASES)
    assert all(r["time_us"] > 0 and r["gb_s"] > 0 for r in data["results"])
    assert "copy" in capsys.readouterr().out


def test_triton_bench_kernels_triton_backend(tmp_path):
    pytest.importorskip("triton")
    args = _parse(["--backend", "triton", "--kernels", "kv_write", "rmsnorm", "--json", str(tmp_path / "t.json")])
    assert args.func(args) == 0
    assert {r["backend"] for r in json.loads((tmp_path / "t.json").read_text())["results"]} == {"triton"}
