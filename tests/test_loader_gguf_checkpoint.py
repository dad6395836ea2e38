"""GGUF checkpoints: names, shapes, q/k un-permutation and config mapping,
checked against transformers' own GGUF loader and against models we write."""
from __future__ import annotations

import inspect
import pathlib

import pytest
import torch

from loader_fixtures import Q, smollm2_gguf, tiny_hf_model, write_model_gguf
from jevons.config import ModelConfig
from jevons.loader.load import load_checkpoint
from jevons.loader.gguf_checkpoint import GGUFCheckpoint, hf_tensor_name, unpermute_rows
from jevons.loader.resolve import resolve_model


@pytest.fixture(scope="module")
def transformers_smollm2() -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers needs it for GGUF loading
    path = smollm2_gguf()
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent),
        gguf_file=path.name,
        dtype=torch.float32,
        quantization_config=transformers.GgufConfig(dequantize=True),
    )


def test_embedded_model_matches_transformers(transformers_smollm2: torch.nn.Module) -> None:
    """Every tensor, dequantized by us, equals transformers' dequantized tensor:
    same HF name, same shape, same values (so q/k un-permutation is right too)."""
    ckpt = load_checkpoint(resolve_model("smollm2-135m-instruct"))
    reference = transformers_smollm2.state_dict()
    stream = ckpt.iter_weights(torch.float32)
    assert inspect.isgenerator(stream)
    seen = []
    for name, tensor in stream:
        assert name in reference, name
        assert tensor.dtype == torch.float32
        assert tensor.shape == reference[name].shape, name
        assert torch.equal(tensor, reference[name]), name
        seen.append(name)
    # The embedded model ties lm_head to the embedding: no output.weight stored.
    assert sorted(seen) == sorted(set(reference) - {"lm_head.weight"})
    assert seen == ckpt.tensor_names()
    assert ckpt.config["tie_word_embeddings"] is True


def test_embedded_config_matches_transformers(transformers_smollm2: torch.nn.Module) -> None:
    ckpt = load_checkpoint(resolve_model("smollm2-135m-instruct"))
    ours, theirs = ckpt.config, transformers_smollm2.config
    assert ours["architectures"] == ["LlamaForCausalLM"]
    for key in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
        "bos_token_id", "eos_token_id", "pad_token_id",
    ):
        assert ours[key] == getattr(theirs, key), key
    assert ours["rope_theta"] == theirs.rope_parameters["rope_theta"] == 100000.0
    cfg = ModelConfig.from_hf(ours)
    assert (cfg.head_dim, cfg.num_key_value_heads, cfg.attention_bias) == (64, 3, False)


def test_bf16_stream(tmp_path: pathlib.Path) -> None:
    model = tiny_hf_model("llama")
    path = tmp_path / "tiny.gguf"
    state = write_model_gguf(path, "llama", model)
    for name, tensor in GGUFCheckpoint(path).iter_weights(torch.bfloat16):
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, state[name].to(torch.bfloat16)), name


@pytest.mark.parametrize("tie", [False, True])
def test_llama_written_like_llama_cpp_round_trips(tmp_path: pathlib.Path, tie: bool) -> None:
    """A tiny Llama written as llama.cpp's converter writes it (q/k permuted per
    head, GQA with 2 kv heads) comes back as exactly the HF state dict."""
    model = tiny_hf_model("llama", tie=tie)
    path = tmp_path / "tiny-llama.gguf"
    state = write_model_gguf(path, "llama", model)
    ckpt = GGUFCheckpoint(path)
    got = dict(ckpt.iter_weights(torch.float32))
    assert set(got) == set(state)
    for name, tensor in got.items():
        assert torch.equal(tensor, state[name]), name
    cfg = ckpt.config
    assert cfg["tie_word_embeddings"] is tie
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]) == (4, 2, 256)
    assert cfg["rope_theta"] == 50000.0 and cfg["attention_bias"] is False


def test_qwen2_with_biases_is_not_unpermuted(tmp_path: pathlib.Path) -> None:
    """Qwen2 uses NEOX-style RoPE, so llama.cpp leaves its q/k rows alone; the
    q/k/v biases map to HF names."""
    model = tiny_hf_model("qwen2")
    path = tmp_path / "tiny-qwen2.gguf"
    state = write_model_gguf(path, "qwen2", model)
    ckpt = GGUFCheckpoint(path)
    got = dict(ckpt.iter_weights(torch.float32))
    assert "model.layers.1.self_attn.q_proj.bias" in got
    assert set(got) == set(state)
    for name, tensor in got.items():
        assert torch.equal(tensor, state[name]), name
    assert ckpt.config["architectures"] == ["Qwen2ForCausalLM"]
    assert ModelConfig.from_hf(ckpt.config).attention_bias is True


def test_quantized_llama_matches_transformers(tmp_path: pathlib.Path) -> None:
    """Mixed block types in one file, read by us and by transformers."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model = tiny_hf_model("llama")
    kinds = {"q_proj": Q.Q4_0, "k_proj": Q.Q8_0, "v_proj": Q.Q4_1, "o_proj": Q.Q5_0,
             "gate_proj": Q.Q5_1, "up_proj": Q.F16, "down_proj": Q.Q8_0, "embed": Q.Q8_0}
    path = tmp_path / "tiny-q.gguf"
    state = write_model_gguf(path, "llama", model, kinds=kinds)
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=path.name, dtype=torch.float32,
        quantization_config=transformers.GgufConfig(dequantize=True),
    ).state_dict()
    for name, tensor in GGUFCheckpoint(path).iter_weights(torch.float32):
        assert torch.equal(tensor, reference[name]), name
        # Quantization error stays small relative to the weights' spread.
        assert (tensor - state[name]).abs().max() <= 0.25 * state[name].abs().max(), name


def test_name_mapping_and_unpermute_unit() -> None:
    assert hf_tensor_name("blk.7.attn_output.weight") == "model.layers.7.self_attn.o_proj.weight"
    assert hf_tensor_name("blk.0.attn_k.bias") == "model.layers.0.self_attn.k_proj.bias"
    assert hf_tensor_name("blk.3.ffn_norm.weight") == "model.layers.3.post_attention_layernorm.weight"
    assert hf_tensor_name("rope_freqs.weight") is None
    with pytest.raises(ValueError, match="no known Hugging Face name"):
        hf_tensor_name("blk.0.ssm_conv1d.weight")
    # One head of dim 4: HF rows [a0 a1 | b0 b1] are stored by llama.cpp as [a0 b0 a1 b1].
    stored = torch.tensor([[0.0], [2.0], [1.0], [3.0]])
    assert unpermute_rows(stored, 1).flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
