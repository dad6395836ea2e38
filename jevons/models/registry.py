"""Which model class serves which Hugging Face architecture name."""
from __future__ import annotations

from typing import Callable

from torch import nn

from jevons.config import ModelConfig
from jevons.models.interfaces import CausalLM
from jevons.models.layers.tensor_parallel import TensorParallel


def _llama(cfg: ModelConfig) -> nn.Module:
    from jevons.models.llama import LlamaForCausalLM

    return LlamaForCausalLM(cfg)


def _deepseek(cfg: ModelConfig) -> nn.Module:
    from jevons.models.deepseek import DeepseekForCausalLM

    return DeepseekForCausalLM(cfg)


def _deepseek_v32(cfg: ModelConfig) -> nn.Module:
    from jevons.models.deepseek_v32 import DeepseekV32ForCausalLM

    return DeepseekV32ForCausalLM(cfg)


def _deepseek_v4(cfg: ModelConfig) -> nn.Module:
    from jevons.models.deepseek_v4 import DeepseekV4ForCausalLM

    return DeepseekV4ForCausalLM(cfg)


_REGISTRY: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "LlamaForCausalLM": _llama,
    "MistralForCausalLM": _llama,
    "Qwen2ForCausalLM": _llama,
    "DeepseekV2ForCausalLM": _deepseek,
    "DeepseekV3ForCausalLM": _deepseek,
    "DeepseekV32ForCausalLM": _deepseek_v32,
    "DeepseekV4ForCausalLM": _deepseek_v4,
}


def register_model(architecture: str, factory: Callable[[ModelConfig], nn.Module]) -> None:
    _REGISTRY[architecture] = factory


def supported_architectures() -> list[str]:
    return sorted(_REGISTRY)


# Architectures whose classes shard themselves over tensor-parallel ranks
# (their factory takes a TensorParallel).
def _llama_tp(cfg: ModelConfig, tp: TensorParallel) -> nn.Module:
    from jevons.models.llama import LlamaForCausalLM

    return LlamaForCausalLM(cfg, tp)


def _deepseek_tp(cfg: ModelConfig, tp: TensorParallel) -> nn.Module:
    from jevons.models.deepseek import DeepseekForCausalLM

    return DeepseekForCausalLM(cfg, tp)


_TENSOR_PARALLEL: dict[str, Callable[[ModelConfig, TensorParallel], nn.Module]] = {
    "LlamaForCausalLM": _llama_tp,
    "MistralForCausalLM": _llama_tp,
    "Qwen2ForCausalLM": _llama_tp,
    "DeepseekV2ForCausalLM": _deepseek_tp,  # MLA heads, experts (or expert parallelism), vocabulary
    "DeepseekV3ForCausalLM": _deepseek_tp,
}
# ... and those that also run attention data-parallel (TensorParallel.dp_attention).
_DP_ATTENTION = frozenset({"DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM"})


def build_model(cfg: ModelConfig, tp: TensorParallel | None = None) -> nn.Module:
    """The module for `cfg` (this rank's shard of it under tensor parallelism);
    it satisfies models/interfaces.py's CausalLM."""
    factory = _REGISTRY.get(cfg.architecture)
    if factory is None:
        raise ValueError(
            f"architecture {cfg.architecture!r} is not supported; jevons runs {', '.join(supported_architectures())}"
        )
    if tp is not None and tp.size > 1:
        if cfg.architecture not in _TENSOR_PARALLEL:
            raise ValueError(f"tensor parallelism is not implemented for {cfg.architecture} yet; it runs "
                             f"{', '.join(sorted(_TENSOR_PARALLEL))}")
        if tp.dp_attention and cfg.architecture not in _DP_ATTENTION:
            raise ValueError(f"DP-attention is implemented for {', '.join(sorted(_DP_ATTENTION))} only, "
                             f"not {cfg.architecture}")
        model = _TENSOR_PARALLEL[cfg.architecture](cfg, tp)
    else:
        model = factory(cfg)
    if not isinstance(model, CausalLM):  # a registered class that misses part of the contract
        raise TypeError(f"{type(model).__name__} (for {cfg.architecture}) does not implement models.interfaces.CausalLM")
    return model
