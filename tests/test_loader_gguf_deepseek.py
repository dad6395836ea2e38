"""Tiny random DeepSeek-V2 and V3 models (transformers' own classes) written
as GGUF the way llama.cpp's converter writes the `deepseek2` architecture,
loaded by jevons: config, logits over a paged prefill and decode against
transformers, the split (attn_k_b/attn_v_b) and fused (attn_kv_b) MLA forms,
a quantized file, and greedy tokens, tokenizer and chat template through the
public API."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from gguf_deepseek_writer import write_deepseek_gguf
from loader_fixtures import Q, gguf, smollm2_gguf
from test_deepseek_tiny import PagedDriver, build_deepseek, hf_model

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128, "beta_fast": 32,
        "beta_slow": 1, "rope_theta": 10000.0}
# Together: q_lora on/off, n_group 1 and >1 (both rules), leading dense layers
# 0/1/2, 0/1/2 shared experts, norm_topk_prob on/off, YaRN in V2 and V3.
SHAPES = {
    "v3": ("v3", {}),
    "v3-yarn": ("v3", dict(q_lora_rank=None, n_shared_experts=2, n_group=4, topk_group=2, num_experts_per_tok=3,
                           norm_topk_prob=False, rope_parameters=dict(YARN, mscale=0.8, mscale_all_dim=0.8))),
    "v2": ("v2", {}),
    "v2-lite": ("v2", dict(q_lora_rank=None, first_k_dense_replace=0, n_shared_experts=1,
                           rope_parameters=dict(YARN, mscale=0.707, mscale_all_dim=0.707))),
    "v2-group": ("v2", dict(topk_method="group_limited_greedy", n_group=4, topk_group=2, num_experts_per_tok=3,
                            n_shared_experts=0, first_k_dense_replace=2)),
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def shape(request, tmp_path_factory):
    version, kw = SHAPES[request.param]
    folder = build_deepseek(tmp_path_factory.mktemp(request.param), version, **kw)
    return request.param, hf_model(folder), tmp_path_factory.mktemp(request.param + "-gguf")


def load_gguf(path: pathlib.Path):
    from jevons.config import ModelConfig
    from jevons.loader.gguf_checkpoint import GGUFCheckpoint
    from jevons.runner.model_loader import load_model

    ckpt = GGUFCheckpoint(path)
    cfg = ModelConfig.from_hf(ckpt.config)
    return load_model(cfg, ckpt.iter_weights(torch.float32), torch.float32, torch.device("cpu"), progress=False)


@torch.no_grad()
def paged_logits(model, seq: list[int], prompt: int) -> torch.Tensor:
    """Prefill `prompt` tokens in one step, then feed the rest one token a step."""
    drv = PagedDriver(model)
    out = [drv.step([(0, seq[:prompt])])[0][0]]
    for tok in seq[prompt:]:
        out.append(drv.step([(0, [tok])])[0][0])
    return torch.cat(out)


def assert_matches_hf(model, hf, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(3, hf.config.vocab_size, (17,), generator=g).tolist()
    got = paged_logits(model, seq, prompt=11)
    with torch.no_grad():
        ref = hf(torch.tensor([seq])).logits[0]
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


@pytest.mark.parametrize("split_kv_b", [True, False], ids=["k_b-v_b", "kv_b"])
def test_logits_match_transformers(shape, split_kv_b: bool) -> None:
    name, hf, tmp = shape
    path = tmp / f"{name}-{split_kv_b}.gguf"
    written = write_deepseek_gguf(path, hf, split_kv_b=split_kv_b)
    assert any(n.endswith("ffn_gate_exps.weight") and t.dim() == 3 for n, t in written.items())
    assert any(n.endswith("attn_k_b.weight") for n in written) == split_kv_b
    assert_matches_hf(load_gguf(path), hf)


def test_config_matches_transformers(shape) -> None:
    from jevons.config import ModelConfig
    from jevons.loader.gguf_checkpoint import GGUFCheckpoint
    from jevons.kernels.torch_ref.moe_routing import RouterConfig

    name, hf, tmp = shape
    path = tmp / f"{name}-config.gguf"
    write_deepseek_gguf(path, hf)
    cfg = GGUFCheckpoint(path).config
    want = hf.config
    v3 = want.model_type == "deepseek_v3"
    assert cfg["architectures"] == [type(hf).__name__]
    for key in ("hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
                "num_attention_heads", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim",
                "v_head_dim", "first_k_dense_replace", "n_routed_experts", "num_experts_per_tok",
                "n_shared_experts", "vocab_size", "max_position_embeddings"):
        assert cfg[key] == getattr(want, key), key
    assert RouterConfig.from_hf(cfg, v3) == RouterConfig.from_hf(want.to_dict(), v3)
    ours = ModelConfig.from_hf(cfg)
    rope = want.rope_parameters
    assert ours.rope_theta == rope["rope_theta"]
    if rope.get("rope_type") == "yarn":
        for key in ("factor", "original_max_position_embeddings", "mscale_all_dim", "beta_fast", "beta_slow"):
            assert ours.rope_scaling[key] == pytest.approx(rope[key]), key
    else:
        assert ours.rope_scaling is None


def _round_trip_matrices(hf, kind) -> None:
    """Give transformers' model the values a `kind` file holds (blocks run
    along each matrix's last dim, as in the fused-kv_b file)."""
    block = gguf.GGML_QUANT_SIZES[kind][0]
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() >= 2 and p.shape[-1] % block == 0 and not name.endswith("mlp.gate.weight"):
                raw = gguf.quants.quantize(p.detach().numpy(), kind)
                p.copy_(torch.from_numpy(gguf.quants.dequantize(raw, kind).reshape(p.shape)))


@pytest.mark.parametrize("kind", [Q.Q8_0, Q.Q4_0], ids=lambda k: k.name)
def test_quantized_file_matches_its_values(tmp_path: pathlib.Path, kind) -> None:
    """A block-quantized file (fused kv_b, so every matrix's blocks run along
    transformers' rows): jevons serves exactly the values it holds."""
    from jevons.loader.gguf_reader import GGUFFile

    hf = hf_model(build_deepseek(tmp_path / "hf", "v3", q_lora_rank=64))
    _round_trip_matrices(hf, kind)
    path = tmp_path / "q.gguf"
    written = write_deepseek_gguf(path, hf, split_kv_b=False, kind=kind)
    f = GGUFFile(path)
    kinds = {t.tensor_type for t in f.tensors.values()}
    assert kind in kinds
    for name, t in written.items():  # re-quantizing the rounded values is lossless
        assert torch.equal(f.read(name).float(), t), name
    assert_matches_hf(load_gguf(path), hf)


TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_engine_greedy_tokens_tokenizer_and_template(tmp_path: pathlib.Path) -> None:
    """Through the public API: the file's tokenizer and chat template, and
    greedy tokens equal to transformers' argmax path."""
    from jevons import LLM, SamplingParams
    from jevons.loader.gguf_reader import open_gguf
    from jevons.loader.gguf_tokenizer import load_gguf_tokenizer

    hf = hf_model(build_deepseek(tmp_path / "hf", "v2", vocab_size=512, q_lora_rank=None))
    path = tmp_path / "tiny-deepseek.gguf"
    write_deepseek_gguf(path, hf, tokenizer_from=open_gguf(smollm2_gguf()), chat_template=TEMPLATE)
    tok = load_gguf_tokenizer(path)
    assert tok.chat_template == TEMPLATE
    prompt = tok.apply_chat_template([{"role": "user", "content": "hello world"}])
    assert prompt == "<|user|>hello world<|assistant|>"
    llm = LLM(str(path), dtype="float32", progress=False)
    outs = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), use_tqdm=False)
    ids = outs[0].prompt_token_ids
    assert ids and max(ids) < 512
    tokens = outs[0].outputs[0].token_ids
    with torch.no_grad():
        logits = hf(torch.tensor([ids + tokens[:-1]])).logits[0, len(ids) - 1 :]
    assert tokens == logits.argmax(-1).tolist()
    assert ids == tok.encode(prompt)


def test_deepseek_names_and_kv_b_fusion_unit() -> None:
    from jevons.loader.gguf_checkpoint import hf_tensor_name
    from jevons.loader.gguf_deepseek import fuse_kv_b

    assert hf_tensor_name("blk.2.exp_probs_b.bias") == "model.layers.2.mlp.gate.e_score_correction_bias"
    assert hf_tensor_name("blk.2.ffn_gate_exps.weight") == "model.layers.2.mlp.experts.gate_proj.weight"
    assert hf_tensor_name("blk.2.ffn_down_shexp.weight") == "model.layers.2.mlp.shared_experts.down_proj.weight"
    assert hf_tensor_name("blk.0.attn_k_b.weight") == "model.layers.0.self_attn.kv_b_proj.weight"
    assert hf_tensor_name("blk.0.attn_v_b.weight") is None  # read with attn_k_b
    # Two heads, rank 3, Dn 2, Dv 1: per head the nope rows, then the value row.
    kv_b = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(6, 3)
    per_head = kv_b.view(2, 3, 3)
    k_b, v_b = per_head[:, :2].transpose(1, 2), per_head[:, 2:]
    assert torch.equal(fuse_kv_b(k_b, v_b), kv_b)
    with pytest.raises(ValueError, match="do not pair up"):
        fuse_kv_b(k_b, v_b[:1])


def test_deepseek_llm_pre_tokenizer(tmp_path: pathlib.Path) -> None:
    """DeepSeek-V2/V2-Lite GGUFs name the 'deepseek-llm' pre-tokenizer: digit
    runs whole, letters with one leading space, punctuation runs, newlines
    and trailing spaces apart (checked once against llama-server's /tokenize
    on mixed-script text: identical ids)."""
    from loader_fixtures import write_tokenizer_only_gguf
    from jevons.loader.gguf_reader import open_gguf
    from jevons.loader.gguf_tokenizer import load_gguf_tokenizer

    path = tmp_path / "v2-tokenizer.gguf"
    write_tokenizer_only_gguf(path, open_gguf(smollm2_gguf()), "deepseek-llm", 6000)
    tok = load_gguf_tokenizer(path)
    pieces = tok.backend.pre_tokenizer.pre_tokenize_str("ab 1234567 日本語x .foo,bar\nend  ")
    assert [p for p, _ in pieces] == ["ab", "Ġ", "1234567", "Ġ", "æĹ¥æľ¬èªŀ", "x", "Ġ.", "foo", ",", "bar", "Ċ",
                                      "end", "ĠĠ"]
    text = "Ünïcödé façade — 東京 한국어 ＡＢＣ１２３\r\n tabs\t"
    assert tok.decode(tok.encode(text), skip_special_tokens=False) == text
