"""What start-up skips stays invisible: the CPU KV cache is zeros without
being written (runner/kv_cache.lazy_zeros), the rotary table is the same
numbers computed at half the work, and building a model on the meta device
neither runs weight initializers nor imports torch._dynamo or sympy."""
from __future__ import annotations

import subprocess
import sys

import torch
from torch import nn

from jevons.models.layers.rotary import RotaryEmbedding, rope_inv_freq
from jevons.runner.kv_cache import allocate_kv_caches, lazy_zeros
from jevons.runner.model_loader import _MetaShortcuts


def test_cpu_kv_cache_is_zeros_and_each_tensor_its_own_memory() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        caches = allocate_kv_caches([((2, 8), (2, 8)), ((4,), (0,))], 5, 4, dtype, torch.device("cpu"))
        assert [tuple(t.shape) for kv in caches for t in kv] == [(5, 4, 2, 8), (5, 4, 2, 8), (5, 4, 4), (5, 4, 0)]
        assert all(t.dtype == dtype and t.is_contiguous() and not t.any() for kv in caches for t in kv)
        caches[0][0][2, 1] = 1.5  # writable, and no other tensor sees it
        assert caches[0][0].sum() == 2 * 8 * 1.5 and not caches[0][1].any() and not caches[1][0].any()
    t = lazy_zeros((3, 7), torch.float32)
    assert tuple(t.shape) == (3, 7) and not t.any()


def _table(dim: int, max_pos: int, base: float, scaling: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain formula: cos/sin of the doubled angles, times the scale."""
    inv_freq, mult = rope_inv_freq(dim, base, scaling, max_pos)
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * mult, emb.sin() * mult


def test_rotary_table_equals_the_doubled_angle_formula() -> None:
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256, "mscale": 1.0,
            "mscale_all_dim": 0.0, "beta_fast": 32, "beta_slow": 1}
    assert rope_inv_freq(64, 1e4, yarn, 1024)[1] != 1.0  # the scaled branch runs
    for dim, max_pos, base, scaling in ((128, 4099, 1e6, None), (64, 1024, 1e4, yarn)):
        r, (cos, sin) = RotaryEmbedding(dim, max_pos, base, scaling), _table(dim, max_pos, base, scaling)
        assert torch.equal(r.cos, cos) and torch.equal(r.sin, sin)


def test_rotary_rows_on_the_fly_are_the_tables() -> None:
    """On the CPU lookup computes the step's rows without building the table; they equal its rows."""
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024, "mscale": 1.0,
            "mscale_all_dim": 0.0, "beta_fast": 32, "beta_slow": 1}
    g = torch.Generator().manual_seed(0)
    for dim, max_pos, base, scaling in ((128, 131072, 1e6, None), (64, 4096, 1e4, yarn)):
        r = RotaryEmbedding(dim, max_pos, base, scaling)
        r.to_device("cpu")
        rows = [(pos, *r.lookup(pos, torch.float32)) for pos in
                (torch.randint(0, max_pos, (n,), generator=g) for n in (1, 3, 17, 64, 300))]
        assert r._tables is None  # nothing built so far
        for pos, cos, sin in rows:
            assert torch.equal(cos, r.cos[pos].unsqueeze(1)) and torch.equal(sin, r.sin[pos].unsqueeze(1))
        bf16 = r.lookup(rows[0][0], torch.bfloat16)  # once built, the table's rows, cast
        assert torch.equal(bf16[0], rows[0][1].to(torch.bfloat16))


def test_meta_construction_runs_no_initializer() -> None:
    calls = []
    with torch.device("meta"), _MetaShortcuts():
        lin, emb = nn.Linear(8, 4), nn.Embedding(10, 4)
    assert lin.weight.is_meta and emb.weight.is_meta and tuple(emb.weight.shape) == (10, 4)
    cpu = torch.empty(3, 3)
    with _MetaShortcuts():  # a real tensor is still initialized
        nn.init.constant_(cpu, 2.0)
        calls.append(float(cpu.sum()))
    assert calls == [18.0]


def test_to_empty_of_a_meta_model_is_plain_empty_tensors() -> None:
    with torch.device("meta"), _MetaShortcuts():
        lin = nn.Linear(8, 4)
    lin.register_buffer("odd", torch.empty(4, 6, device="meta").t())  # not contiguous: empty_like itself
    with _MetaShortcuts():
        lin = lin.to_empty(device="cpu")
    assert lin.weight.device.type == "cpu" and tuple(lin.weight.shape) == (4, 8) and lin.weight.dtype == torch.float32
    assert isinstance(lin.weight, nn.Parameter) and lin.weight.requires_grad
    assert lin.odd.stride() == (1, 6)


def test_building_a_model_does_not_import_dynamo() -> None:
    code = (
        "import sys, torch\n"
        "from jevons.config import ModelConfig\n"
        "from jevons.runner.model_loader import materialize\n"
        "cfg = ModelConfig.from_hf({'architectures': ['LlamaForCausalLM'], 'model_type': 'llama', "
        "'hidden_size': 64, 'intermediate_size': 128, 'num_hidden_layers': 2, 'num_attention_heads': 4, "
        "'num_key_value_heads': 2, 'vocab_size': 100, 'max_position_embeddings': 64})\n"
        "materialize(cfg, torch.float32, torch.device('cpu'))\n"
        "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'\n"
        "assert 'sympy' not in sys.modules, 'sympy was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
