"""Every registered model class fits the runner's contract, and both
tokenizers fit the engine's (models/interfaces.py, loader/tokenizer_like.py)."""
from __future__ import annotations

import pytest
import torch

from jevons.config import ModelConfig
from jevons.loader.id_tokenizer import IdTokenizer
from jevons.loader.presets import get_preset
from jevons.loader.resolve import resolve_model
from jevons.loader.load import load_tokenizer
from jevons.loader.tokenizer_like import TokenizerLike
from jevons.models.interfaces import CausalLM
from jevons.models import registry
from jevons.models.registry import build_model, supported_architectures

TINY = {"num_hidden_layers": 1, "vocab_size": 64}


@pytest.mark.parametrize("preset", ["smollm2-135m-instruct", "deepseek-v2-lite", "deepseek-v3"])
def test_registered_models_are_causal_lms(preset):
    cfg = ModelConfig.from_hf({**get_preset(preset), **TINY})
    with torch.device("meta"):
        model = build_model(cfg)
    assert isinstance(model, CausalLM)
    spec = model.kv_cache_spec()
    assert len(spec) == 1 and all(isinstance(k, tuple) and isinstance(v, tuple) for k, v in spec)
    assert supported_architectures()


def test_a_model_missing_part_of_the_contract_is_refused(monkeypatch):
    class NoLogits(torch.nn.Module):
        def forward(self, input_ids, positions, ctx):
            return input_ids

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # registered for this test only
    registry.register_model("NoLogitsForCausalLM", lambda cfg: NoLogits())
    cfg = ModelConfig.from_hf({**get_preset("smollm2-135m-instruct"), **TINY, "architectures": ["NoLogitsForCausalLM"]})
    with pytest.raises(TypeError, match="CausalLM"):
        build_model(cfg)


def test_tokenizers_fit_the_engine_contract():
    assert isinstance(IdTokenizer(10), TokenizerLike)
    assert isinstance(load_tokenizer(resolve_model("smollm2-135m-instruct")), TokenizerLike)
