"""bench/dummy_gguf.py: a Llama-family preset written as a random-weight GGUF
loads in jevons with the preset's shapes and a working tokenizer (a tiny
preset here, monkeypatched in; the real ones are gigabytes)."""
from __future__ import annotations

import pathlib

import pytest
import torch

from loader_fixtures import gguf  # noqa: F401  (skips without the gguf package)

TINY = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 700,
    "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
}


def test_tiny_preset_round_trips(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jevons.bench import dummy_gguf
    from jevons.config import ModelConfig
    from jevons.loader.gguf_checkpoint import GGUFCheckpoint
    from jevons.loader.gguf_tokenizer import load_gguf_tokenizer
    from jevons.runner.model_loader import load_model

    monkeypatch.setattr("jevons.loader.presets.get_preset", lambda name: dict(TINY))
    path = dummy_gguf.write_dummy_gguf("tiny", tmp_path / "tiny.gguf")
    ckpt = GGUFCheckpoint(path)
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size"):
        assert ckpt.config[key] == TINY[key], key
    model = load_model(ModelConfig.from_hf(ckpt.config), ckpt.iter_weights(torch.float32), torch.float32,
                       torch.device("cpu"), progress=False)
    assert model.embed_tokens.weight.shape == (700, 64)
    assert 0.01 < float(model.embed_tokens.weight.detach().std()) < 0.03
    tok = load_gguf_tokenizer(path)
    ids = tok.encode("hello world")
    assert ids and max(ids) < 700 and tok.decode(ids) == "hello world"
