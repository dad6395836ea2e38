"""Frozen configuration for every layer of the engine.

Everything a component needs to know about its setting arrives through one of
these dataclasses; nothing reads globals or environment variables at step time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

DEFAULT_MODEL = "smollm2-135m-instruct"

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def cpu_has_bf16() -> bool:
    """Native bf16 math (AVX512-BF16 or AMX): bf16 GEMMs then run several times
    faster than fp32 ones instead of slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def parse_dtype(dtype: str | torch.dtype, device: str = "cpu") -> torch.dtype:
    """Map a user-facing dtype name to torch. "auto" is bf16 on GPUs and on
    CPUs with native bf16, float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.startswith("cuda") or cpu_has_bf16():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[dtype]


@dataclass(frozen=True)
class ModelConfig:
    """The architecture, as read from a Hugging Face config.json (or GGUF metadata
    mapped onto the same keys). `hf` keeps the raw dict for family-specific keys."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    tie_word_embeddings: bool
    attention_bias: bool
    hf: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "ModelConfig":
        archs = cfg.get("architectures") or ["LlamaForCausalLM"]
        arch = archs[0]
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        qkv_bias = bool(cfg.get("attention_bias", False)) or arch.startswith("Qwen2")
        # transformers >= 5 folds rope_theta and rope_scaling into rope_parameters.
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        rope_scaling = None if rope_type == "default" and "factor" not in rope else rope
        return cls(
            architecture=arch,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg.get("intermediate_size", 4 * hidden)),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=qkv_bias,
            hf=dict(cfg),
        )


@dataclass(frozen=True)
class CacheConfig:
    """Paged KV cache. Size is absolute bytes, a number of blocks, or by default
    sized to the workload (runner/kv_cache.py): max_num_seqs sequences of
    min(max_model_len, tokens_per_seq) tokens, at least one of max_model_len,
    capped by memory_fraction of the memory free when the engine starts."""

    block_size: int = 16
    cache_bytes: int | None = None
    memory_fraction: float = 0.25  # cap on the default size, of free memory
    tokens_per_seq: int = 512  # the default size's allowance per sequence
    # A hard cap in blocks; tests use it to force preemption.
    num_blocks: int | None = None
    enable_prefix_caching: bool = True
    # Prefix-cache tiers below the device pool (cache_tiers.py). Host RAM for
    # blocks evicted from the device: 0 turns it off (the default, since on a
    # CPU the device pool is host RAM already).
    cpu_cache_bytes: int = 0
    # The disk tier is opt-in: a folder, bounded in bytes by LRU.
    disk_cache_dir: str | None = None
    disk_cache_bytes: int = 10 * 2**30


_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
               "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_bytes(size: int | float | str) -> int:
    """A byte count from 2000000, 2e9, "512MiB", "4G" (k/M/G/T are decimal, KiB/MiB/GiB/TiB binary)."""
    if isinstance(size, (int, float)):
        return int(size)
    text = size.strip().lower()
    num = text.rstrip("kmgtib ")
    unit = text[len(num):].strip()
    if unit not in _SIZE_UNITS or not num:
        raise ValueError(f"can't read {size!r} as a size in bytes (try 2e9, 512MiB or 4G)")
    return int(float(num) * _SIZE_UNITS[unit])


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 64
    max_model_len: int | None = None


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding, in vLLM's `--speculative-config` JSON shape (e.g.
    `{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4}`).
    Drafts are verified in the same step as the token before them, so outputs
    keep the target model's distribution (runner/spec/)."""

    method: str = "ngram"
    num_speculative_tokens: int = 4  # drafts per request per step (at most)
    prompt_lookup_max: int = 4  # ngram: longest suffix n-gram looked up in prompt + output
    prompt_lookup_min: int = 2  # ngram: shortest (1 matches common tokens and drafts mostly noise)
    # mtp: the checkpoint's multi-token-prediction layer (DeepSeek-V3/R1) drafts,
    # chained num_speculative_tokens times as DeepSeek and SGLang do.
    # draft_model: a smaller model with the same tokenizer (a path or alias).
    model: str | None = None

    METHODS = ("ngram", "mtp", "draft_model")
    # vLLM's other names for the same methods.
    ALIASES = {"deepseek_mtp": "mtp"}

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", self.ALIASES.get(self.method, self.method))
        if self.method not in self.METHODS:
            raise ValueError(f"speculative_config: method {self.method!r} is not supported; choose one of {self.METHODS}")
        if (self.method == "draft_model") != (self.model is not None):
            raise ValueError("speculative_config: model (the draft model) goes with method 'draft_model', and only there")
        if self.num_speculative_tokens < 1:
            raise ValueError("speculative_config: num_speculative_tokens must be at least 1")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError("speculative_config: need 1 <= prompt_lookup_min <= prompt_lookup_max")

    @classmethod
    def parse(cls, value: "SpeculativeConfig | dict[str, Any] | str | None") -> "SpeculativeConfig | None":
        """From a dict or its JSON text (the CLI flag); an unknown key is a ValueError naming it."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, str):
            import json

            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"speculative_config is not valid JSON: {e}") from None
        if not isinstance(value, dict):
            raise ValueError("speculative_config must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"speculative_config: unknown key {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return cls(**value)


@dataclass(frozen=True)
class ParallelConfig:
    """How the model is spread over devices (runner/executor.py). With
    tensor_parallel_size > 1 each of that many worker processes holds a shard
    of every layer and of the KV cache; the engine sends each step to all of them."""

    tensor_parallel_size: int = 1
    # Engine replicas behind one server (engine/dp_engine.py), each with its
    # own copy of the model (its own tensor_parallel_size workers) and KV cache.
    data_parallel_size: int = 1
    # Which replica this engine is (set by the server for each): on GPUs,
    # replica r's ranks use GPUs [r * tp, (r + 1) * tp).
    data_parallel_rank: int = 0
    # DeepSeek MoE: partition the routed experts over the tensor-parallel ranks
    # (whole experts per rank) instead of cutting every expert's intermediate size.
    enable_expert_parallel: bool = False
    # DeepSeek: attention (and its KV cache) data-parallel over the same ranks,
    # each serving its own requests; the MoE layers expert-parallel over all
    # their tokens (runner/dp_attention.py).
    enable_dp_attention: bool = False
    # "uni": the model runs in the engine's process (the default for one
    # device); "mp": worker processes on this machine (the default for more,
    # and for data parallelism: each replica computes in its own process);
    # "ray": Ray actors anywhere in a Ray cluster.
    distributed_executor_backend: str | None = None
    # A worker that does not answer a step (or finish loading) in this many
    # seconds is declared dead, so a lost worker is an error, never a hang.
    step_timeout_s: float = 300.0
    start_timeout_s: float = 900.0

    BACKENDS = ("uni", "mp", "ray")

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ValueError("tensor_parallel_size must be at least 1")
        if self.data_parallel_size < 1:
            raise ValueError("data_parallel_size must be at least 1")
        if not 0 <= self.data_parallel_rank < self.data_parallel_size:
            raise ValueError("data_parallel_rank must be in [0, data_parallel_size)")
        if self.distributed_executor_backend not in (None, *self.BACKENDS):
            raise ValueError(f"distributed_executor_backend {self.distributed_executor_backend!r} is not supported; "
                             f"choose one of {self.BACKENDS}")
        if self.distributed_executor_backend == "uni" and self.world_size > 1:
            raise ValueError("the 'uni' executor runs one process; tensor_parallel_size > 1 needs 'mp'")
        if self.step_timeout_s <= 0 or self.start_timeout_s <= 0:
            raise ValueError("worker timeouts must be positive")

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size

    @property
    def backend(self) -> str:
        """The executor that runs: the one asked for, else by world size."""
        if self.distributed_executor_backend is not None:
            return self.distributed_executor_backend
        return "mp" if self.world_size > 1 or self.data_parallel_size > 1 else "uni"

    @property
    def processes(self) -> int:
        """Model processes on the machine: what the CPU cores are shared by."""
        return self.world_size * self.data_parallel_size


@dataclass(frozen=True)
class EngineConfig:
    model: str = DEFAULT_MODEL
    dtype: str = "auto"
    device: str = "cpu"
    seed: int = 0
    load_format: str = "auto"  # "auto" reads weights; "dummy" makes random ones
    # "auto" | "none" | "int8" | "int8-compact" | "int4" | "int4-compact" (weight-only,
    # see models/layers/linear.py); "auto" is resolved by resolve_quantization.
    quantization: str = "auto"
    # Bitwise-identical outputs for a given request and seed whatever the
    # batch, chunking, preemption and cache state (models/layers/batch_invariant.py,
    # AttentionMetadata.build_rows); costs some speed, see docs/benchmarks.md.
    deterministic: bool = False
    # Keys merged over the model's config.json, as vLLM's hf_overrides (e.g. a
    # preset cut to two layers for a quick dummy-weight run).
    hf_overrides: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    # Sampling defaults for fields a request leaves out: "auto" (the model's
    # generation_config.json or GGUF keys), "vllm" (jevons's own) or a folder.
    # LLM, `jevons chat` and the server all read the same ones.
    generation_config: str = "auto"
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    # Speculative decoding (off when None); a dict or JSON text is parsed.
    speculative_config: SpeculativeConfig | None = None
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "speculative_config", SpeculativeConfig.parse(self.speculative_config))


# The flat, vLLM-style names that LLM(...), the CLI flags and tests use, mapped
# onto the nested parts. The defaults stay in the dataclasses above: a name
# left out keeps its field's default.
_CACHE_NAMES = {
    "block_size": "block_size", "kv_cache_bytes": "cache_bytes", "kv_cache_memory_fraction": "memory_fraction",
    "num_kv_blocks": "num_blocks", "enable_prefix_caching": "enable_prefix_caching",
    "cpu_cache_size": "cpu_cache_bytes", "disk_cache_dir": "disk_cache_dir", "disk_cache_size": "disk_cache_bytes",
}
_SIZES = {"cache_bytes", "cpu_cache_bytes", "disk_cache_bytes"}  # "4GiB" as well as 4e9
_SCHEDULER_NAMES = {"max_num_batched_tokens", "max_num_seqs", "max_model_len"}
_PARALLEL_NAMES = {"tensor_parallel_size", "data_parallel_size", "distributed_executor_backend",
                   "enable_expert_parallel", "enable_dp_attention"}
ENGINE_SETTINGS = tuple(
    sorted({f for f in EngineConfig.__dataclass_fields__ if f not in ("cache", "scheduler", "parallel")}
           | set(_CACHE_NAMES) | _SCHEDULER_NAMES | _PARALLEL_NAMES))


def engine_config(**settings: Any) -> EngineConfig:
    """An EngineConfig from flat settings (`model=..., num_kv_blocks=64,
    max_model_len=1024`). An unknown name is a TypeError naming it."""
    top: dict[str, Any] = {}
    cache: dict[str, Any] = {}
    sched: dict[str, Any] = {}
    parallel: dict[str, Any] = {}
    for name, value in settings.items():
        if name in _CACHE_NAMES:
            key = _CACHE_NAMES[name]
            if key in _SIZES and value is not None:
                value = parse_bytes(value)
            elif key == "disk_cache_dir" and value is not None:
                value = str(value)
            cache[key] = value
        elif name in _SCHEDULER_NAMES:
            sched[name] = value
        elif name in _PARALLEL_NAMES:
            parallel[name] = value
        elif name in ENGINE_SETTINGS:
            top[name] = str(value) if name == "model" else value
        else:
            raise TypeError(f"unknown engine setting {name!r}; known: {', '.join(ENGINE_SETTINGS)}")
    return EngineConfig(**top, cache=CacheConfig(**cache), scheduler=SchedulerConfig(**sched),
                        parallel=ParallelConfig(**parallel))
