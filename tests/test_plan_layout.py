"""`jevons plan`'s recommended parallel layout (cost/layout.py): the TP / EP /
DP / node counts it picks, and that the `jevons serve` command it prints is
accepted by the real CLI parser and turns into the EngineConfig it describes."""
from __future__ import annotations

import io
import json
import shlex

import pytest

from jevons.cli import build_parser
from jevons.cli_args import engine_config
from jevons.cost.layout import TP_ARCHITECTURES


def plan(*argv: str) -> tuple[dict, str]:
    """(the JSON plan's layout, the table's text) for the same arguments."""
    parser = build_parser()
    outs = []
    for extra in (["--json"], []):
        args = parser.parse_args(["plan", *argv, *extra])
        out = io.StringIO()
        assert args.func(args, out=out) == 0
        outs.append(out.getvalue())
    return json.loads(outs[0])["layout"], outs[1]


def served(command: str):
    """The EngineConfig `jevons serve` would build from a printed command line."""
    argv = shlex.split(command)
    assert argv[:2] == ["jevons", "serve"]
    args = build_parser().parse_args(argv[1:])
    return args, engine_config(args)


CASES = [
    # model, plan flags, expected (tp, ep, dp, nodes)
    ("deepseek-v3", ["--hardware", "h200", "--gpus", "16"], (16, True, 1, 2)),  # FP8 held as bf16: 1.3 TB
    ("deepseek-v3", ["--hardware", "h200", "--gpus", "8", "--devices", "32"], (16, True, 2, 4)),
    ("deepseek-v2-lite", ["--hardware", "h100", "--gpus", "8"], (1, False, 8, 1)),
    ("deepseek-r1-distill-llama-70b", ["--hardware", "h100", "--gpus", "8"], (4, False, 2, 1)),  # 141 GB: 2 x 72 is short
    ("deepseek-v2-lite", ["--hardware", "cpu", "--memory-gb", "24", "--precision", "int4"], (1, False, 1, 1)),
]


@pytest.mark.parametrize("model,flags,want", CASES, ids=[f"{c[0]}-{c[1][1]}-{c[1][3]}" for c in CASES])
def test_printed_serve_flags_parse_into_the_layout(model, flags, want):
    layout, text = plan(model, *flags)
    tp, ep, dp, nodes = want
    got = (layout["tensor_parallel"], layout["expert_parallel"], layout["data_parallel"], layout["nodes"])
    assert got == want
    assert f"serve with          {layout['serve_command']}" in text  # the table prints the same command
    args, cfg = served(layout["serve_command"])
    assert args.model == model
    par = cfg.parallel
    assert (par.tensor_parallel_size, par.enable_expert_parallel, par.data_parallel_size) == (tp, ep, dp)
    assert par.backend == ("ray" if nodes > 1 else "mp" if tp * dp > 1 else "uni")
    assert cfg.device == ("cpu" if "cpu" in flags else "cuda")
    assert cfg.quantization == ("int4" if "int4" in flags else "auto")


def test_architectures_without_tp_get_replicas_only():
    layout, _ = plan("deepseek-v3.2", "--hardware", "h200", "--gpus", "8", "--precision", "int4")
    assert layout["tensor_parallel"] == 1 and layout["data_parallel"] == 8
    assert any("no tensor parallelism for DeepseekV32ForCausalLM" in n for n in layout["notes"])


def test_layout_architectures_are_the_registry_s():
    from jevons.models.registry import _TENSOR_PARALLEL

    assert TP_ARCHITECTURES == set(_TENSOR_PARALLEL)
