"""A DeepSeek-V4 checkpoint as DeepSeek ships it: FP8 (e4m3) weights with one
power-of-two (e8m0) scale per 128 x 128 block under `X.scale`, routed experts
either FP8 too or FP4 (two e2m1 codes per byte, an e8m0 scale per 32
columns), and DeepSeek's own top-level names (`embed.weight`, `hc_head_fn`,
...). jevons dequantizes at load and matches transformers run on the same
dequantized values."""
import json

import pytest
import torch

from deepseek_v4_tiny import build_deepseek_v4
from test_deepseek_parity import close, rand_seqs
from test_deepseek_tiny import PagedDriver, hf_model, load_jevons

RENAMES = {"model.embed_tokens.weight": "embed.weight", "model.hc_head.hc_fn": "hc_head_fn",
           "model.hc_head.hc_base": "hc_head_base", "model.hc_head.hc_scale": "hc_head_scale"}


def fp8_with_scale(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block power-of-two scales (e8m0) and e4m3 payload of a 2-D weight."""
    n, k = w.shape
    gn, gk = -(-n // block), -(-k // block)
    pad = torch.zeros(gn * block, gk * block)
    pad[:n, :k] = w
    amax = pad.view(gn, block, gk, block).abs().amax(dim=(1, 3)).clamp(min=1e-12)
    scale = torch.exp2(torch.ceil(torch.log2(amax / 448.0)))
    full = scale.repeat_interleave(block, 0).repeat_interleave(block, 1)[:n, :k]
    return (w / full).to(torch.float8_e4m3fn), scale.to(torch.float8_e8m0fnu)


E2M1_MAGNITUDES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def fp4_with_scale(w: torch.Tensor, group: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed e2m1 codes [N, K / 2] (low nibble = even column) and e8m0 scales [N, K / group]."""
    n, k = w.shape
    g = w.view(n, k // group, group)
    scale = torch.exp2(torch.ceil(torch.log2(g.abs().amax(-1).clamp(min=1e-12) / 6.0)))
    x = (g / scale[..., None]).view(n, k)
    code = (x.abs()[..., None] - E2M1_MAGNITUDES).abs().argmin(-1) | ((x < 0).long() << 3)
    packed = (code[:, 0::2] | (code[:, 1::2] << 4)).to(torch.uint8).view(torch.int8)
    return packed, scale.to(torch.float8_e8m0fnu)


def dequant_fp4_reference(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    u = packed.view(torch.uint8).long()
    table = torch.cat([E2M1_MAGNITUDES, -E2M1_MAGNITUDES])
    vals = torch.stack([table[u & 15], table[u >> 4]], -1).reshape(packed.shape[0], -1)
    return vals * scale.float().repeat_interleave(vals.shape[1] // scale.shape[1], 1)


@pytest.fixture(scope="module", params=["fp8-experts", "fp4-experts"])
def checkpoints(request, tmp_path_factory):
    """(DeepSeek-style FP8/FP4 folder, the same values in float32 for transformers)."""
    from safetensors.torch import load_file, save_file

    fp4_experts = request.param == "fp4-experts"
    # FP4 groups are 32 columns: the experts' down projection needs K = 32.
    ref = build_deepseek_v4(tmp_path_factory.mktemp("v4-ref"), **({"moe_intermediate_size": 32} if fp4_experts else {}))
    fp8 = tmp_path_factory.mktemp("v4-fp8")
    for f in ref.iterdir():
        if f.suffix != ".safetensors":
            (fp8 / f.name).write_bytes(f.read_bytes())
    tensors = load_file(ref / "model.safetensors")
    deq, out = {}, {}
    for name, t in tensors.items():
        if fp4_experts and ".ffn.experts." in name:
            q, s = fp4_with_scale(t)
            out[name], out[name[: -len(".weight")] + ".scale"] = q, s
            deq[name] = dequant_fp4_reference(q, s)
        elif t.dim() == 2 and name.endswith(".weight") and "norm" not in name and "embed" not in name:
            q, s = fp8_with_scale(t)
            out[name], out[name[: -len(".weight")] + ".scale"] = q, s
            full = s.float().repeat_interleave(128, 0).repeat_interleave(128, 1)[: t.shape[0], : t.shape[1]]
            deq[name] = q.float() * full
        else:
            out[RENAMES.get(name, name)], deq[name] = t, t
    save_file(out, fp8 / "model.safetensors")
    save_file(deq, ref / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((fp8 / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0",
                                  "weight_block_size": [128, 128], "activation_scheme": "dynamic"}
    if fp4_experts:
        cfg["expert_dtype"] = "fp4"
    (fp8 / "config.json").write_text(json.dumps(cfg))
    return fp8, ref


def test_fp8_checkpoint_matches_transformers_on_dequantized_weights(checkpoints):
    fp8, ref = checkpoints
    hf = hf_model(ref)
    model = load_jevons(fp8)
    seq = rand_seqs(hf.config.vocab_size, [19], seed=5)[0]
    got = PagedDriver(model).step([(0, seq)])[0][0]
    with torch.no_grad():
        want = hf(torch.tensor([seq])).logits[0]
    close(got, want)


def test_fp4_dequantization_matches_transformers_unpacking():
    """kernels/torch_ref/fp4.py against transformers' own FP4 unpacking (its
    FP8 quantizer's dequantization of int8-packed experts)."""
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    from jevons.kernels.torch_ref.fp4 import dequant_fp4

    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    packed, scale = fp4_with_scale(w)
    theirs = Fp8Dequantize(None)._dequantize_one(packed, scale, torch.float32)
    assert torch.equal(dequant_fp4(packed, scale), theirs)
    assert torch.equal(dequant_fp4(packed, scale), dequant_fp4_reference(packed, scale))
    assert (dequant_fp4(packed, scale) - w).abs().max() < 0.5 * scale.float().max()
