"""MLA's glue in one C call (kernels/cpu/mla_prep.py: de-interleave and
rotate q_rope, normalize the latent, rotate the rope key, write the cache)
gives the same bits as the layer's torch steps on the cpu backend
(MLAttention._prep_torch), and the model runs it for every step."""
from types import SimpleNamespace

import pytest
import torch

from jevons import runtime
from jevons.kernels.cpu import build
from jevons.kernels.cpu.mla_prep import mla_prep
from jevons.kernels.registry import ops_for
from jevons.models.layers.mla import MLAConfig, MLAttention
from jevons.models.layers.rotary import RotaryEmbedding

pytestmark = pytest.mark.skipif(build.load() is None, reason="C kernels unavailable")

YARN = {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 64, "beta_fast": 32,
        "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}


def _layer(heads: int, interleave: bool, scaling: dict | None, dtype: torch.dtype) -> MLAttention:
    c = MLAConfig(hidden=64, num_heads=heads, q_lora_rank=None, kv_lora_rank=64, qk_nope_head_dim=32,
                  qk_rope_head_dim=16, v_head_dim=32, bias=False, rope_interleave=interleave, scale=0.1)
    layer = MLAttention(c, 0, RotaryEmbedding(16, 4096, 10000.0, scaling))
    with torch.no_grad():
        layer.kv_a_layernorm.weight.normal_(1.0, 0.2)
    return layer.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("interleave,scaling", [(True, None), (False, None), (True, YARN)])
def test_prep_matches_the_torch_steps(dtype, interleave, scaling):
    runtime.configure(runtime.RuntimeConfig(kernel_backend="cpu"))
    layer = _layer(4, interleave, scaling, dtype)
    c = layer.c
    g = torch.Generator().manual_seed(0)
    n = 19  # above the kernel's 16-row threading threshold
    q = torch.randn(n, 4 * 48 + 8, generator=g).to(dtype)[:, 8:].view(n, 4, 48)  # rows with a stride, as a view
    kv = torch.randn(n, 80, generator=g).to(dtype)
    positions = torch.randint(0, 4096, (n,), generator=g)
    slots = torch.randperm(40, generator=g)[:n]
    ctx = SimpleNamespace(attn=SimpleNamespace(slot_mapping=slots))
    cache_ref = torch.zeros(5, 8, 80, dtype=dtype)
    q_rope_ref, latent_ref = layer._prep_torch(positions, q, kv, cache_ref, ctx, ops_for("cpu"))
    cache = torch.zeros_like(cache_ref)
    got = mla_prep(q, kv, c.qk_nope_head_dim, c.kv_lora_rank, layer.rotary.cos, layer.rotary.sin, positions,
                   layer.kv_a_layernorm.weight, layer.kv_a_layernorm.eps, interleave, cache, slots)
    assert got is not None
    q_rope, latent = got
    assert torch.equal(q_rope, q_rope_ref) and torch.equal(latent, latent_ref)
    assert torch.equal(cache, cache_ref)
    # Per row: the same bits alone as in the batch.
    one = mla_prep(q[3:4], kv[3:4], c.qk_nope_head_dim, c.kv_lora_rank, layer.rotary.cos, layer.rotary.sin,
                   positions[3:4], layer.kv_a_layernorm.weight, layer.kv_a_layernorm.eps, interleave,
                   torch.zeros_like(cache), slots[3:4])
    assert torch.equal(one[0], q_rope[3:4]) and torch.equal(one[1], latent[3:4])


def test_prep_declines_what_it_does_not_take():
    layer = _layer(2, True, None, torch.float32)
    q, kv = torch.randn(3, 2, 48), torch.randn(3, 80)
    cache = torch.zeros(2, 8, 80, dtype=torch.bfloat16)  # a cache dtype other than the rows'
    assert mla_prep(q, kv, 32, 64, layer.rotary.cos, layer.rotary.sin, torch.arange(3),
                    layer.kv_a_layernorm.weight, 1e-6, True, cache, torch.arange(3)) is None


def test_the_model_runs_it_every_step(tmp_path, monkeypatch):
    import jevons.models.layers.mla as mla
    from test_deepseek_parity import rand_seqs, run_paged
    from test_deepseek_tiny import build_deepseek, load_jevons

    model = load_jevons(build_deepseek(tmp_path / "v2", "v2", q_lora_rank=None, first_k_dense_replace=0))
    calls: list[int] = []

    def counting(*args, **kw):
        out = mla_prep(*args, **kw)
        calls.append(0 if out is None else args[0].shape[0])
        return out

    monkeypatch.setattr(mla, "mla_prep", counting)
    runtime.configure(runtime.RuntimeConfig(kernel_backend="cpu"))
    seqs = rand_seqs(200, [12, 6, 15, 9], seed=3)
    run_paged(model, seqs, [7, 2, 11, 5], 3)
    assert calls and all(calls)  # every layer of every step, none declined
