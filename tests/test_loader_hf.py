"""Hugging Face folders: safetensors (single, sharded, FP8) and tokenizer files."""
from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from loader_fixtures import smollm2_gguf, tiny_hf_model
from jevons.config import ModelConfig
from jevons.loader.load import load_checkpoint
from jevons.loader.resolve import resolve_model
from jevons.loader.safetensors_reader import SafetensorsCheckpoint
from jevons.loader.load import load_tokenizer

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("shard", [None, "300KB"])
def test_iter_weights_is_the_state_dict(tmp_path: pathlib.Path, arch: str, shard: str | None) -> None:
    model = tiny_hf_model(arch)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(tmp_path, **kwargs)
    assert (tmp_path / "model.safetensors.index.json").is_file() == (shard is not None)
    state = model.state_dict()

    ckpt = load_checkpoint(resolve_model(str(tmp_path)))
    assert isinstance(ckpt, SafetensorsCheckpoint)
    assert sorted(ckpt.tensor_names()) == sorted(state)
    for dtype in (torch.float32, torch.bfloat16):
        got = dict(ckpt.iter_weights(dtype))
        assert set(got) == set(state)
        for name, tensor in got.items():
            assert tensor.dtype == dtype
            assert torch.equal(tensor, state[name].to(dtype)), name
    cfg = ModelConfig.from_hf(ckpt.config)
    assert cfg.architecture == {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]
    assert (cfg.hidden_size, cfg.num_key_value_heads, cfg.head_dim) == (256, 2, 64)


def test_tied_model_omits_lm_head(tmp_path: pathlib.Path) -> None:
    model = tiny_hf_model("llama", tie=True)
    model.save_pretrained(tmp_path)
    ckpt = load_checkpoint(resolve_model(str(tmp_path)))
    assert "lm_head.weight" not in ckpt.tensor_names()
    assert ckpt.config["tie_word_embeddings"] is True


def test_fp8_weights_and_scales_pass_through(tmp_path: pathlib.Path) -> None:
    """DeepSeek-style FP8 checkpoints: float8 weights and their float32
    `weight_scale_inv` keep their dtype; ordinary floating tensors convert."""
    torch.manual_seed(0)
    weights = {
        "model.layers.0.mlp.experts.3.gate_proj.weight": torch.randn(256, 128).to(torch.float8_e4m3fn),
        "model.layers.0.mlp.experts.3.gate_proj.weight_scale_inv": torch.rand(2, 1) + 0.5,
        "model.layers.0.input_layernorm.weight": torch.randn(128, dtype=torch.bfloat16),
        "model.embed_tokens.weight": torch.randn(16, 128, dtype=torch.float16),
        "model.layers.0.self_attn.kv_a_proj_with_mqa.weight": torch.randn(64, 128).to(torch.float8_e4m3fn),
    }
    save_file(weights, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["DeepseekV3ForCausalLM"]}))
    got = dict(load_checkpoint(resolve_model(str(tmp_path))).iter_weights(torch.bfloat16))
    for name, tensor in weights.items():
        if tensor.dtype == torch.float8_e4m3fn:
            assert got[name].dtype == torch.float8_e4m3fn, name
            assert torch.equal(got[name].view(torch.uint8), tensor.view(torch.uint8)), name  # bit-identical
        elif name.endswith("_scale_inv"):
            assert got[name].dtype == torch.float32 and torch.equal(got[name], tensor), name
        else:
            assert got[name].dtype == torch.bfloat16, name
            assert torch.equal(got[name], tensor.to(torch.bfloat16)), name


def test_missing_weights_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        load_checkpoint(resolve_model(str(tmp_path)))


# ---- tokenizer files -----------------------------------------------------------


@pytest.fixture(scope="module")
def saved_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The SmolLM2 tokenizer saved by transformers as a HF folder."""
    path = smollm2_gguf()
    folder = tmp_path_factory.mktemp("smollm2-tokenizer")
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "eos_token_id": 2}))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0], "bos_token_id": 1}))
    return folder


MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hi in 日本語 😀"},
    {"role": "assistant", "content": "こんにちは"},
    {"role": "user", "content": "Thanks!"},
]


def test_hf_tokenizer_matches_transformers(saved_tokenizer: pathlib.Path) -> None:
    ours = load_tokenizer(resolve_model(str(saved_tokenizer)))
    theirs = transformers.AutoTokenizer.from_pretrained(str(saved_tokenizer))
    prompt = theirs.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert ours.apply_chat_template(MESSAGES) == prompt
    for text in (prompt, "Hello 2024 world!\n\n  indented", "emoji 🤗 日本語"):
        ids = ours.encode(text)
        assert ids == theirs(text)["input_ids"]
        assert ours.decode(ids, skip_special_tokens=False) == text
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
    assert ours.eos_token_ids == frozenset({0, 2})  # generation_config lists both
    assert (ours.bos_token_id, ours.eos_token_id, ours.add_bos) == (1, 2, False)
    assert ours.vocab_size == len(theirs)


def _edit_tokenizer_config(folder: pathlib.Path, **changes: Any) -> None:
    path = folder / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_hf_tokenizer_config_variants(saved_tokenizer: pathlib.Path, tmp_path: pathlib.Path) -> None:
    import shutil

    folder = tmp_path / "variant"
    shutil.copytree(saved_tokenizer, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    # A list of named templates: "default" is used.
    _edit_tokenizer_config(
        folder,
        chat_template=[{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "{{ bos_token }}X"}],
        add_bos_token=True,
    )
    tok = load_tokenizer(resolve_model(str(folder)))
    assert tok.apply_chat_template(MESSAGES) == "<|im_start|>X"
    assert tok.encode("hi") == [1, *tok.encode("hi", add_special_tokens=False)]
    # A chat_template.jinja file wins over tokenizer_config.
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}|{% endfor %}")
    rendered = load_tokenizer(resolve_model(str(folder))).apply_chat_template(MESSAGES[:2])
    assert rendered == "Be brief.|Say hi in 日本語 😀|"
    # No template at all: a clear error.
    (folder / "chat_template.jinja").unlink()
    _edit_tokenizer_config(folder, chat_template=None)
    with pytest.raises(ValueError, match="no chat template"):
        load_tokenizer(resolve_model(str(folder))).apply_chat_template(MESSAGES)


def test_bos_from_post_processor(saved_tokenizer: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Without add_bos_token in tokenizer_config, a post-processor that adds
    BOS (as Llama 3's tokenizer.json does) decides."""
    import shutil

    from tokenizers import Tokenizer as Backend
    from tokenizers.processors import TemplateProcessing

    folder = tmp_path / "bos"
    shutil.copytree(saved_tokenizer, folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("add_bos_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    backend = Backend.from_file(str(folder / "tokenizer.json"))
    backend.post_processor = TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    backend.save(str(folder / "tokenizer.json"))
    tok = load_tokenizer(resolve_model(str(folder)))
    assert tok.add_bos and tok.encode("hi")[0] == 1 and tok.encode("hi", add_special_tokens=False)[0] != 1
