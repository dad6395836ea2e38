"""A quantized GGUF run builds its quantized layers straight from the file
(runner/direct_load.py): the same model as the old path (float model first,
then quantize_model / moe_qgemm.install from the GGUF's levels), without ever
allocating or dequantizing the float weights of the layers stored on the
kernel's grid."""
from __future__ import annotations

import pathlib

import pytest
import torch

from loader_fixtures import Q, smollm2_gguf, write_model_gguf
from jevons import LLM, SamplingParams
from jevons.kernels.cpu import qgemm
from jevons.loader import gguf_checkpoint, gguf_reader
from jevons.runner import direct_load, model_loader

needs_kernel = pytest.mark.skipif(not qgemm.available(), reason="needs the C kernels with AVX2 or AVX512-VNNI")

# Every case of the plan in one tiny Llama: fused q/k/v from Q4_0 levels (layer 0)
# and from floats because one part is Q5_1 (layer 1), Q4_1 levels, Q8_0 at
# int4 (levels of the wrong width) and Q5_0 (no exact levels): quantized from
# their blocks, a Q8_0 embedding, a Q5_0 head. (gguf's writer
# cannot make K-quants; their levels are tests/test_gguf_quant.py's.)
_KINDS = {
    "layers.1.self_attn.v_proj": Q.Q5_1,
    "o_proj": Q.Q8_0,
    "layers.0.mlp.down_proj": Q.Q5_0,
    "gate_proj": Q.Q4_1,
    "up_proj": Q.Q4_1,
    "embed_tokens": Q.Q8_0,
    "lm_head": Q.Q5_0,
    "proj": Q.Q4_0,
}


def _tiny_llama(arch: str, tie: bool) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM
    from loader_fixtures import tiny_hf_config

    cfg = tiny_hf_config(arch, tie)
    cfg.vocab_size, cfg.intermediate_size = 320, 768  # no layer shares the head's shape; K-quant rows fit
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.normal_(1.0 if "norm" in name else 0.0, 0.1)
    return model.eval()


def _old_path(monkeypatch) -> None:
    """build_model as before direct loading: the float model, then quantize."""
    def old(cfg, source, method, dtype, device, progress=True):
        return model_loader.load_model(cfg, source.iter_weights(dtype), dtype, device, None, False)
    monkeypatch.setattr(model_loader, "load_model_direct", old)


def _generate(llm: LLM) -> list:
    out = llm.generate([{"prompt_token_ids": list(range(3, 20))}, {"prompt_token_ids": [5, 9, 2, 7]}],
                       SamplingParams(temperature=0, max_tokens=6, logprobs=3), use_tqdm=False)
    return [(o.outputs[0].token_ids, [[(t, lp.logprob) for t, lp in sorted(step.items())] for step in
                                       o.outputs[0].logprobs]) for o in out]


def _same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Equal but for the untied float head, which the direct path never builds
    (its int8 `fast_head` is what runs, and that must be equal), and an
    untied model's embedding, which stays stored: every row it looks up
    equals the float table's."""
    assert a.lm_head is None or isinstance(a.lm_head, direct_load.PendingLinear)
    assert isinstance(a.fast_head, torch.nn.Module)
    skip = ("lm_head",)
    emb = a.embed_tokens
    assert isinstance(emb, direct_load.StoredEmbedding) == \
        (a.lm_head is not None and getattr(a, "embedding_lookup_only", False))
    if isinstance(emb, direct_load.StoredEmbedding):
        ids = torch.arange(emb.num_embeddings).flip(0)
        assert torch.equal(emb(ids), b.embed_tokens.weight[ids])
        assert torch.equal(emb(ids[:6].view(2, 3)), b.embed_tokens(ids[:6].view(2, 3)))
        with pytest.raises(IndexError):
            emb(torch.tensor([emb.num_embeddings]))
        skip += ("embed_tokens",)
    assert [(n, type(m)) for n, m in a.named_modules() if not n.startswith(skip)] == \
        [(n, type(m)) for n, m in b.named_modules() if not n.startswith(skip)]
    for kind in ("named_parameters", "named_buffers"):
        ta, tb = ({n: t for n, t in getattr(m, kind)() if not n.startswith(skip)} for m in (a, b))
        assert ta.keys() == tb.keys()
        for name in ta:
            assert torch.equal(ta[name], tb[name]), name


class _Spy:
    """What the loader dequantizes and what materialize allocates."""

    def __init__(self, monkeypatch) -> None:
        self.dequantized: list[str] = []
        self.params: dict[str, tuple[int, ...]] = {}
        real_deq, real_mat = gguf_reader.dequantize_tensor, model_loader.materialize

        def deq(t):
            self.dequantized.append(t.name)
            return real_deq(t)

        def mat(*args, **kwargs):
            model = real_mat(*args, **kwargs)
            self.params = {n: tuple(p.shape) for n, p in model.named_parameters()}
            return model
        monkeypatch.setattr(gguf_reader, "dequantize_tensor", deq)
        monkeypatch.setattr(gguf_checkpoint, "dequantize_tensor", deq)
        monkeypatch.setattr(model_loader, "materialize", mat)


@needs_kernel
@pytest.mark.parametrize("arch,tie", [("llama", False), ("qwen2", False), ("llama", True)])
def test_a_dense_gguf_builds_the_old_model_without_its_floats(tmp_path: pathlib.Path, monkeypatch, arch, tie) -> None:
    path = tmp_path / "mixed.gguf"
    write_model_gguf(path, arch, _tiny_llama(arch, tie), _KINDS, tokenizer_from=gguf_reader.open_gguf(smollm2_gguf()))
    with monkeypatch.context() as m:
        spy = _Spy(m)
        new = LLM(str(path), dtype="float32", quantization="int4", progress=False)
    with monkeypatch.context() as m:
        _old_path(m)
        old = LLM(str(path), dtype="float32", quantization="int4", progress=False)
    _same_model(new.engine.runner.model, old.engine.runner.model)
    assert _generate(new) == _generate(old)
    # The layers on the kernel's grid: never dequantized, never materialized.
    from_levels = [f"blk.0.attn_{p}.weight" for p in ("q", "k", "v")] + \
        [f"blk.{i}.ffn_{p}.weight" for i in (0, 1) for p in ("gate", "up")] + ["blk.1.ffn_down.weight"]
    assert not set(from_levels) & set(spy.dequantized)
    # Q5_0, and Q8_0 at int4, are quantized from their blocks in C (kernels/cpu/qgemm_quant.py);
    # a type it does not read (Q5_1) is dequantized one tensor at a time (layer 1's q, k and v).
    assert not {"blk.0.ffn_down.weight", "blk.0.attn_output.weight"} & set(spy.dequantized)
    assert "token_embd.weight" not in spy.dequantized  # the float embedding: dequantized in C in place
    assert {"blk.1.attn_v.weight", "blk.1.attn_q.weight", "blk.1.attn_k.weight"} <= set(spy.dequantized)
    quantized = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    assert not [n for n in spy.params if any(q in n for q in quantized) and n.endswith(".weight")]
    pending = [n for n, m in new.engine.runner.model.named_modules() if isinstance(m, direct_load.PendingLinear)]
    assert pending == ([] if tie else ["lm_head"]) and "lm_head.weight" not in spy.params
    cfg = new.engine.runner.model.cfg  # an untied embedding is never allocated
    assert spy.params["embed_tokens.weight"] == ((0,) if not tie else (cfg.vocab_size, cfg.hidden_size))


@needs_kernel
@pytest.mark.parametrize("version,kind", [("v3", Q.Q4_0), ("v2", Q.Q5_0)], ids=["v3-Q4_0", "v2-Q5_0"])
def test_a_deepseek_gguf_packs_its_experts_from_the_file(tmp_path: pathlib.Path, monkeypatch, version, kind) -> None:
    """Q4_0: every expert and linear from the file's blocks, no float expert
    ever allocated; Q5_0 (no exact levels): experts dequantized one at a time
    and quantized, the same model as quantizing the loaded floats."""
    from gguf_deepseek_writer import write_deepseek_gguf
    from jevons.models.layers.moe_qgemm import QgemmExperts
    from test_deepseek_tiny import build_deepseek, hf_model

    hf = hf_model(build_deepseek(tmp_path / "hf", version, vocab_size=512))
    path = tmp_path / "ds.gguf"
    write_deepseek_gguf(path, hf, kind=kind, tokenizer_from=gguf_reader.open_gguf(smollm2_gguf()))
    with monkeypatch.context() as m:
        spy = _Spy(m)
        new = LLM(str(path), dtype="float32", quantization="int4", progress=False)
    with monkeypatch.context() as m:
        _old_path(m)
        old = LLM(str(path), dtype="float32", quantization="int4", progress=False)
    model = new.engine.runner.model
    _same_model(model, old.engine.runner.model)
    assert _generate(new) == _generate(old)
    moes = [m for m in model.modules() if hasattr(m, "int4_experts") and m.int4_experts is not None]
    assert moes and all(isinstance(m.int4_experts, QgemmExperts) for m in moes)
    # No float stacked experts were ever allocated.
    assert all(spy.params[n] == (0,) for n in spy.params if ".experts.w" in n)
    if kind == Q.Q4_0:
        assert not [n for n in spy.dequantized if n.endswith(("_exps.weight", "_shexp.weight", "attn_q_a.weight"))]
    else:  # one expert's slice at a time
        assert any(n.endswith("_exps.weight") for n in spy.dequantized)
