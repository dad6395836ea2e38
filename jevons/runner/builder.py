"""Everything that happens once, before the first step: resolve the model,
load its checkpoint and tokenizer, build the module and stream the weights in,
quantize, prepack (CPU), make it batch invariant (deterministic mode), size
and allocate the KV cache, and fingerprint the result. `build_model` returns
it all as one `BuiltModel`; the engine builds its scheduler, KV manager and
runner on top and never touches `models/` itself."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from jevons import runtime
from jevons.config import EngineConfig, ModelConfig, parse_dtype
from jevons.loader.tokenizer_like import TokenizerLike
from jevons.models.layers.tensor_parallel import TensorParallel
from jevons.runner.cache_fingerprint import cache_fingerprint
from jevons.runner.kv_cache import allocate_kv_caches, num_blocks_for, window_pool_blocks
from jevons.runner.model_loader import load_model
from jevons.runner.model_runner import ModelRunner

log = logging.getLogger("jevons")


@dataclass(frozen=True)
class BuiltModel:
    # a models.interfaces.CausalLM (this rank's shard under tensor parallelism);
    # None in the engine's copy when worker processes hold the model (runner/mp_executor.py)
    model: nn.Module | None
    tokenizer: TokenizerLike  # loader/tokenizer.py's Tokenizer, or IdTokenizer for a config-only preset
    model_config: ModelConfig
    model_path: Path | None  # None for a config-only preset
    model_name: str
    device: torch.device
    dtype: torch.dtype
    quantization: str  # "none", "int8", "int4", ... (linear.resolve_quantization)
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]  # [] in the engine's copy when workers hold them
    num_blocks: int
    block_size: int
    kv_bytes_per_token: int
    max_model_len: int
    fingerprint: bytes  # block hashes' extra key (runner/cache_fingerprint.py)
    load_s: float
    # A window pool (DeepSeek-V4, models/layers/v4_cache.py): its tensors, after
    # kv_caches in the runner's list, and (blocks, tokens retained) for the
    # engine's bookkeeping (engine/window_blocks.py).
    kv_window_caches: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    kv_window: tuple[int, ...] | None = None  # WindowSpec's fields: (blocks, retain) per lane


def dummy_preset(config: EngineConfig) -> dict | None:
    """A config-only preset (e.g. "deepseek-v2-lite") with load_format="dummy":
    random weights, nothing read from disk. A real local model wins."""
    from jevons.loader.presets import get_preset, list_presets

    if config.load_format != "dummy" or Path(config.model).exists():
        return None
    if config.model.lower() not in {p.lower() for p in list_presets()}:
        return None
    if config.model.lower() == "smollm2-135m-instruct":
        return None  # the embedded model exists: use its real config and tokenizer
    return get_preset(config.model)


def quantize_loaded(model: nn.Module, quantization: str, levels_for, device: torch.device) -> None:
    """Quantize what loading left in float (everything after load_model; the
    output head and any unplanned layer after load_model_direct)."""
    from jevons.models.layers.linear import quantize_model

    if quantization != "none":
        n = quantize_model(model, quantization, levels_for=levels_for)
        if n:  # none left after load_model_direct, as a rule
            log.info("quantized %d linear layers to %s", n, quantization)
    if quantization.startswith("int4") and device.type == "cpu":
        # A MoE's routed experts are most of its bytes: at 4 bits too (models/layers/moe_int4.py).
        from jevons.models.layers import moe_qgemm  # where qgemm runs: one fused C call per layer

        moes = [(n, m) for n, m in model.named_modules()
                if hasattr(m, "quantize_experts_int4") and m.int4_experts is None]
        for name, m in moes:
            if not moe_qgemm.install(m, levels_for, f"model.{name}"):
                m.quantize_experts_int4()
        if moes:
            log.info("quantized the routed experts of %d MoE layers to int4", len(moes))


def build_model(config: EngineConfig, progress: bool = True, tp: TensorParallel | None = None) -> BuiltModel:
    """The model (this rank's shard of it with `tp`: every rank of the group
    calls this together, since they agree on the KV cache size) and all else."""
    from jevons.loader.load import load_checkpoint
    from jevons.loader.resolve import resolve_model
    from jevons.loader.load import load_tokenizer

    t0 = time.monotonic()
    runtime.configure()  # the JEVONS_* switches, read once for this engine
    device = torch.device(config.device)
    dtype = parse_dtype(config.dtype, config.device)
    weights, n_tensors, stored_bits, levels_for, ckpt = None, None, None, None, None
    preset = dummy_preset(config)
    if preset is not None:
        from jevons.loader.id_tokenizer import IdTokenizer

        model_path, model_name = None, config.model
        model_config = ModelConfig.from_hf({**preset, **(config.hf_overrides or {})})
        tokenizer = IdTokenizer(model_config.vocab_size)
    else:
        resolved = resolve_model(config.model)
        model_path, model_name = resolved.path, resolved.name
        ckpt = load_checkpoint(resolved)
        tokenizer = load_tokenizer(resolved)
        model_config = ModelConfig.from_hf({**ckpt.config, **(config.hf_overrides or {})})
        if config.load_format != "dummy":
            weights, n_tensors = ckpt.iter_weights(dtype), len(ckpt.tensor_names())
            stored_bits = ckpt.stored_bits()
            levels_for = ckpt.quantized_levels  # a GGUF's own blocks, not rounded again
            if tp is not None and tp.size > 1:
                levels_for = None  # those blocks are the whole tensor's; a shard is quantized from its own values
    from jevons.models.layers.linear import resolve_quantization

    quantization = resolve_quantization(config.quantization, stored_bits, dtype, device)
    if weights is not None and quantization != "none" and levels_for is not None and hasattr(ckpt, "read_weight"):
        # A quantized GGUF run: its quantized layers are built from the file, never in float.
        from jevons.runner.model_loader import load_model_direct

        model = load_model_direct(model_config, ckpt, quantization, dtype, device, progress)
    else:
        model = load_model(model_config, weights, dtype, device, n_tensors, progress, tp)
    quantize_loaded(model, quantization, levels_for, device)
    if device.type == "cpu":
        from jevons.models.layers.packed_linear import pack_model
        from jevons.runner.cpu_malloc import tune_malloc

        tune_malloc()
        log.info("prepacked %d linear layers for oneDNN", pack_model(model))
    if config.deterministic:
        from jevons.models.layers.batch_invariant import make_batch_invariant

        log.info("deterministic: %d linear layers run in fixed row tiles", make_batch_invariant(model, dtype))
    load_s = time.monotonic() - t0

    # The KV cache: sized from CacheConfig (runner/kv_cache.py).
    bs = config.cache.block_size
    layout = model.kv_cache_layout(bs) if hasattr(model, "kv_cache_layout") else None  # DeepSeek-V4's two pools
    spec = layout.main if layout is not None else model.kv_cache_spec()
    sc = config.speculative_config
    if sc is not None and sc.method == "mtp" and hasattr(model, "mtp_kv_cache_spec"):
        spec = spec + model.mtp_kv_cache_spec()  # the MTP block's own cache layer(s), after the model's
    per_block = ModelRunner.kv_bytes_per_block(spec, bs, dtype)
    max_model_len = min(
        config.scheduler.max_model_len or model_config.max_position_embeddings,
        model_config.max_position_embeddings,
    )
    num_blocks = num_blocks_for(config.cache, per_block, device, max_num_seqs=config.scheduler.max_num_seqs,
                                max_model_len=max_model_len)
    # More blocks than max_num_seqs full-length sequences is wasted memory.
    num_blocks = min(num_blocks, config.scheduler.max_num_seqs * -(-max_model_len // bs) + 1)
    if tp is not None:  # every rank holds the same blocks (of its own heads)
        num_blocks = tp.agree_min(num_blocks)
    caches = allocate_kv_caches(spec, num_blocks, bs, dtype, device)
    window_caches, window = [], None
    if layout is not None:  # per lane (engine/window_blocks.py): (blocks, retain), the tensors after the main ones
        window = ()
        lanes = [(layout.window, layout.retain)] + ([(layout.short, layout.short_retain)] if layout.short else [])
        for lane, retain in lanes:
            n = window_pool_blocks(retain, bs, config.scheduler.max_num_seqs, config.scheduler.max_num_batched_tokens)
            window += (n, retain)
            window_caches += allocate_kv_caches(lane, n, bs, dtype, device)
            log.info("window pool lane: %d blocks (%.1f MiB), %d tokens retained per sequence", n,
                     n * ModelRunner.kv_bytes_per_block(lane, bs, dtype) / 2**20, retain)
    log.info(
        "model %s loaded in %.1fs; KV cache: %d blocks x %d tokens = %d tokens (%.1f MiB, %d B/token)",
        model_name, load_s, num_blocks, bs, num_blocks * bs, num_blocks * per_block / 2**20, per_block // bs,
    )
    # Block hashes carry the model fingerprint, so no tier can mix up KV
    # from another model or configuration.
    fingerprint = cache_fingerprint(model_path or model_name, model_config, dtype, bs, caches, config.load_format,
                                    quantization, config.deterministic)
    return BuiltModel(
        model=model, tokenizer=tokenizer, model_config=model_config, model_path=model_path, model_name=model_name,
        device=device, dtype=dtype, quantization=quantization, kv_caches=caches, num_blocks=num_blocks,
        block_size=bs, kv_bytes_per_token=per_block // bs, max_model_len=max_model_len, fingerprint=fingerprint,
        load_s=load_s, kv_window_caches=window_caches, kv_window=window,
    )
