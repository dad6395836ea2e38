"""FP8 block-scaled checkpoints as DeepSeek ships them: the dequantizer against
a block-by-block loop, weight/scale pairing in any order, and a tiny DeepSeek
checkpoint quantized here that loads and matches its dequantized reference."""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from jevons.models.layers.fp8 import dequant_block_fp8, pair_fp8_weights
from test_deepseek_tiny import build_deepseek, hf_model, load_jevons

FP8 = torch.float8_e4m3fn


def quantize(w, block):
    """Per-block absmax scaling onto e4m3's +-448 range; returns (fp8, scale_inv)."""
    bn, bk = block
    n, k = w.shape
    padded = F.pad(w.float(), (0, -k % bk, 0, -n % bn))
    blocks = padded.view(padded.shape[0] // bn, bn, padded.shape[1] // bk, bk)
    scale = blocks.abs().amax(dim=(1, 3)).clamp_min(1e-12) / 448.0
    q = (blocks / scale[:, None, :, None]).view_as(padded)[:n, :k].to(FP8)
    return q, scale


def dequant_loop(q, s, block):
    bn, bk = block
    out = q.float()
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            out[i * bn : (i + 1) * bn, j * bk : (j + 1) * bk] *= s[i, j]
    return out


@pytest.mark.parametrize("shape,block", [((300, 200), (128, 128)), ((256, 128), (128, 128)), ((48, 70), (32, 32))])
def test_dequant_matches_block_loop(shape, block):
    torch.manual_seed(0)
    q, s = quantize(torch.randn(shape), block)
    assert s.shape == (-(-shape[0] // block[0]), -(-shape[1] // block[1]))
    torch.testing.assert_close(dequant_block_fp8(q, s, block), dequant_loop(q, s, block), rtol=0, atol=0)


def test_dequant_rejects_mismatched_scales():
    q, s = quantize(torch.randn(256, 256), (128, 128))
    with pytest.raises(ValueError, match="does not tile"):
        dequant_block_fp8(q, s[:1], (128, 128))


def test_pairing_in_any_order():
    q, s = quantize(torch.randn(40, 40), (32, 32))
    plain = torch.randn(3)
    for stream in ([("a.weight", q), ("a.weight_scale_inv", s), ("n.weight", plain)],
                   [("a.weight_scale_inv", s), ("n.weight", plain), ("a.weight", q)]):
        out = {name: (t, sc) for name, t, sc in pair_fp8_weights(stream, (32, 32))}
        assert set(out) == {"a.weight", "n.weight"}
        torch.testing.assert_close(out["a.weight"][0], dequant_loop(q, s, (32, 32)))
        assert out["a.weight"][1] is s and out["n.weight"][1] is None
    with pytest.raises(ValueError, match="never met"):
        list(pair_fp8_weights([("a.weight", q)], (32, 32)))


def _quantizable(name, t):
    """What DeepSeek quantizes: every linear weight inside the layers except the router."""
    return (t.dim() == 2 and name.startswith("model.layers.") and not name.endswith("mlp.gate.weight")
            and t.numel() > 0)


@pytest.fixture(scope="module")
def fp8_pair(tmp_path_factory):
    """(fp8 checkpoint dir, the same checkpoint dequantized, block)."""
    block = (32, 32)
    src = build_deepseek(tmp_path_factory.mktemp("bf"), "v3", q_lora_rank=None, n_shared_experts=2)
    tensors = load_file(src / "model.safetensors")
    scales, weights, rest, deq = {}, {}, {}, {}
    for name, t in tensors.items():
        if _quantizable(name, t):
            q, s = quantize(t, block)
            weights[name], scales[name + "_scale_inv"] = q, s
            deq[name] = dequant_loop(q, s, block)
        else:
            rest[name] = deq[name] = t
    cfg = json.loads((src / "config.json").read_text())
    fp8_dir = tmp_path_factory.mktemp("fp8")
    # Two shards with every scale in the first, so scales arrive before their weights.
    shards = {"model-00001-of-00002.safetensors": {**scales, **rest}, "model-00002-of-00002.safetensors": weights}
    for fname, part in shards.items():
        save_file(part, fp8_dir / fname)
    index = {"weight_map": {n: f for f, part in shards.items() for n in part}}
    (fp8_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    fp8_cfg = dict(cfg, quantization_config={"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                             "weight_block_size": list(block)})
    (fp8_dir / "config.json").write_text(json.dumps(fp8_cfg))
    ref_dir = tmp_path_factory.mktemp("deq")
    save_file(deq, ref_dir / "model.safetensors", metadata={"format": "pt"})
    (ref_dir / "config.json").write_text(json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (fp8_dir / f).write_text((src / f).read_text())
    return fp8_dir, ref_dir, block, scales


def test_fp8_checkpoint_matches_dequantized_reference(fp8_pair):
    fp8_dir, ref_dir, _, _ = fp8_pair
    hf = hf_model(ref_dir)
    model = load_jevons(fp8_dir)
    ids = torch.randint(3, hf.config.vocab_size, (29,), generator=torch.Generator().manual_seed(0))
    from test_deepseek_tiny import PagedDriver

    got = PagedDriver(model).step([(0, ids.tolist())])[0][0]
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    # Dequantizing at load is exact: the same model from the dequantized tensors is bit-identical.
    same = PagedDriver(load_jevons(ref_dir)).step([(0, ids.tolist())])[0][0]
    assert torch.equal(got, same)


def test_scales_stay_on_their_modules(fp8_pair):
    fp8_dir, _, block, scales = fp8_pair
    model = load_jevons(fp8_dir)
    attn = model.layers[0].self_attn
    assert torch.equal(attn.kv_a_proj_with_mqa.weight_scale_inv,
                       scales["model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv"])
    dense = model.layers[0].mlp.gate_up_proj.weight_scale_inv  # gate then up, stacked
    gate_s = scales["model.layers.0.mlp.gate_proj.weight_scale_inv"]
    assert torch.equal(dense[: gate_s.shape[0]], gate_s)
    experts = model.layers[1].mlp.experts
    up3 = scales["model.layers.1.mlp.experts.3.up_proj.weight_scale_inv"]
    assert torch.equal(experts.w13_scale_inv[3, up3.shape[0]:], up3)
    assert torch.equal(experts.w2_scale_inv[5], scales["model.layers.1.mlp.experts.5.down_proj.weight_scale_inv"])
    assert not hasattr(model.layers[1].mlp.gate, "weight_scale_inv")  # the router stays unquantized
