"""DeepSeek-V3 multi-token prediction. transformers drops these weights, so
the MTP layer (a real transformers decoder layer's weights plus random
enorm/hnorm/eh_proj/shared_head.norm) is written into a tiny checkpoint here
and checked against a hand-written reference, over a paged prefill and then
step-by-step decode."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from test_deepseek_tiny import PagedDriver, build_deepseek, hf_model, load_jevons

N = 3  # num_hidden_layers of the tiny model: the MTP layer is layers.3


def rms(x, w, eps=1e-6):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


@pytest.fixture(scope="module")
def mtp_ckpt(tmp_path_factory):
    main_dir = build_deepseek(tmp_path_factory.mktemp("main"), "v3", num_hidden_layers=N)
    # A deeper twin supplies a genuine decoder block (MoE, MLA) for layer N.
    twin_dir = build_deepseek(tmp_path_factory.mktemp("twin"), "v3", num_hidden_layers=N + 1, seed=7)
    main, twin = load_file(main_dir / "model.safetensors"), load_file(twin_dir / "model.safetensors")
    hidden = main["model.embed_tokens.weight"].shape[1]
    g = torch.Generator().manual_seed(3)
    pre = f"model.layers.{N}."
    own = {
        pre + "enorm.weight": 1 + 0.2 * torch.randn(hidden, generator=g),
        pre + "hnorm.weight": 1 + 0.2 * torch.randn(hidden, generator=g),
        pre + "shared_head.norm.weight": 1 + 0.2 * torch.randn(hidden, generator=g),
        pre + "eh_proj.weight": 0.06 * torch.randn(hidden, 2 * hidden, generator=g),
        # DeepSeek stores copies of the shared embedding and head under the MTP layer too.
        pre + "embed_tokens.weight": main["model.embed_tokens.weight"].clone(),
        pre + "shared_head.head.weight": main["lm_head.weight"].clone(),
    }
    block = {k: v for k, v in twin.items() if k.startswith(pre)}
    mtp_dir = tmp_path_factory.mktemp("mtp")
    save_file({**main, **block, **own}, mtp_dir / "model.safetensors", metadata={"format": "pt"})
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (mtp_dir / f).write_text((main_dir / f).read_text())
    assert json.loads((mtp_dir / "config.json").read_text())["num_nextn_predict_layers"] == 1
    return main_dir, twin_dir, mtp_dir, own


@torch.no_grad()
def reference_mtp_logits(main_dir, twin_dir, own, ids):
    """Logits for token i+2 from (h_i, t_{i+1}) for i in 0..L-2, by hand, with
    transformers' own decoder layer as the block."""
    hf, twin = hf_model(main_dir), hf_model(twin_dir)
    pre = f"model.layers.{N}."
    h = hf.model(ids[None]).last_hidden_state[0]
    e = hf.model.embed_tokens(ids[1:])
    x = torch.cat([rms(e, own[pre + "enorm.weight"]), rms(h[:-1], own[pre + "hnorm.weight"])], -1)
    x = (x @ own[pre + "eh_proj.weight"].T)[None]
    pos = torch.arange(len(ids) - 1)[None]
    cos_sin = twin.model.rotary_emb(x, pos)
    L = x.shape[1]
    mask = torch.full((L, L), float("-inf")).triu(1)[None, None]
    y = twin.model.layers[N](x, attention_mask=mask, position_ids=pos, position_embeddings=cos_sin)
    y = y[0] if isinstance(y, tuple) else y
    return rms(y[0], own[pre + "shared_head.norm.weight"]) @ hf.lm_head.weight.T


def run_mtp(model, ids, first_chunk):
    """Main prefill over all of ids, then the MTP layer over (h_i, t_{i+1}):
    a prefill chunk, then one token per step, as speculative decoding will."""
    drv = PagedDriver(model, extra_layers=1)
    _, (hidden,) = drv.step([(0, ids.tolist())])
    out = []
    cuts = [0, first_chunk] + list(range(first_chunk + 1, len(ids)))
    for a, b in zip(cuts, cuts[1:]):
        nxt, pos, ctx = drv.context([(1, ids[a + 1 : b + 1].tolist())])
        drv.lens[1] = drv.lens.get(1, 0) + b - a
        with torch.no_grad():
            out.append(model.compute_logits(model.forward_mtp(nxt, pos, hidden[a:b], ctx)))
    return torch.cat(out)


def test_mtp_matches_hand_written_reference(mtp_ckpt):
    main_dir, twin_dir, mtp_dir, own = mtp_ckpt
    model = load_jevons(mtp_dir)
    assert model.mtp_layers is not None and len(model.mtp_layers) == 1
    ids = torch.randint(3, 300, (23,), generator=torch.Generator().manual_seed(0))
    got = run_mtp(model, ids, first_chunk=12)
    ref = reference_mtp_logits(main_dir, twin_dir, own, ids)
    assert got.shape == (len(ids) - 1, model.cfg.vocab_size)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    # Deterministic: the same inputs give bit-identical predictions.
    assert torch.equal(run_mtp(model, ids, first_chunk=12), got)


def test_main_model_unchanged_by_mtp_weights(mtp_ckpt):
    main_dir, _, mtp_dir, _ = mtp_ckpt
    ids = torch.randint(3, 300, (17,), generator=torch.Generator().manual_seed(1)).tolist()
    with_mtp, without = load_jevons(mtp_dir), load_jevons(main_dir)
    assert without.mtp_layers is None  # transformers' checkpoint carries no MTP layer: dropped
    assert len(with_mtp.mtp_kv_cache_spec()) == 1 and without.mtp_kv_cache_spec() == []
    a = PagedDriver(with_mtp).step([(0, ids)])[0][0]
    b = PagedDriver(without).step([(0, ids)])[0][0]
    assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="no multi-token"):
        without.forward_mtp(torch.tensor([5]), torch.tensor([0]), torch.zeros(1, 64), None)


def test_partial_mtp_layer_is_an_error(mtp_ckpt, tmp_path):
    _, _, mtp_dir, _ = mtp_ckpt
    tensors = load_file(mtp_dir / "model.safetensors")
    del tensors[f"model.layers.{N}.eh_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((mtp_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="partial MTP"):
        load_jevons(tmp_path)
