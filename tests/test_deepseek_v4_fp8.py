"""A DeepSeek-V4 checkpoint as DeepSeek ships it: FP8 (e4m3) weights with one
power-of-two (e8m0) scale per 128 x 128 block under `X.scale`, and DeepSeek's
own top-level names (`embed.weight`, `hc_head_fn`, ...). jevons dequantizes at
load and matches transformers run on the same dequantized values."""
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


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(DeepSeek-style FP8 folder, the same values in float32 for transformers)."""
    from safetensors.torch import load_file, save_file

    ref = build_deepseek_v4(tmp_path_factory.mktemp("v4-ref"))
    fp8 = tmp_path_factory.mktemp("v4-fp8")
    for f in ref.iterdir():
        if f.suffix != ".safetensors":
            (fp8 / f.name).write_bytes(f.read_bytes())
    tensors = load_file(ref / "model.safetensors")
    deq, out = {}, {}
    for name, t in tensors.items():
        if t.dim() == 2 and name.endswith(".weight") and "norm" not in name and "embed" not in name:
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
