"""The engine and sampling flags that several commands share (`jevons serve`,
`chat`, `generate`, `perplexity`, `bench`), and turning them into an
EngineConfig and SamplingParams. The command modules import this; it imports
none of them."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from jevons.config import EngineConfig, SpeculativeConfig
from jevons.config import engine_config as _engine_config

# The flags' defaults are the config's: EngineConfig owns every default once.
_D = EngineConfig()


def add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--model", "-m", default=_D.model, help="local path (GGUF or HF dir) or alias (default: %(default)s)")
    g.add_argument("--dtype", default=_D.dtype, help="float32 | bfloat16 | float16 | auto (bf16 on GPUs and on CPUs with native bf16, else float32)")
    g.add_argument("--device", default=_D.device)
    g.add_argument("--load-format", default=_D.load_format, choices=["auto", "dummy"])
    g.add_argument("--quantization", "-q", default=_D.quantization, choices=["auto", "none", "int8", "int8-compact", "int4", "int4-compact"],
                   help="weight-only quantization at load; the quantized weights are the model on every path "
                        "(decode, prefill, any batch). auto: int4 for a GGUF stored in 4 bits on a CPU where "
                        "jevons's kernel runs (AVX512-VNNI or AVX2; the file's own 4-bit levels), else none. "
                        "int8 / int4: group-wise weights (half / a quarter of bf16's bytes); where only PyTorch's "
                        "kernels run, large batches use a dense copy that is their exact dequantization "
                        "(-compact: no copy, dequantized on the fly)")
    g.add_argument("--deterministic", action="store_true",
                   help="bitwise-identical outputs for a request and seed whatever the batch, chunking, "
                        "preemption and cache state (costs speed; docs/benchmarks.md)")
    g.add_argument("--block-size", type=int, default=_D.cache.block_size)
    g.add_argument("--kv-cache-bytes", type=float, default=None,
                   help="KV cache size in bytes (e.g. 2e9). Default: sized to the model and --max-num-seqs, "
                        f"--max-num-seqs sequences of min(--max-model-len, {_D.cache.tokens_per_seq}) tokens and at least one of "
                        "--max-model-len, capped as below")
    g.add_argument("--kv-cache-memory-fraction", type=float, default=_D.cache.memory_fraction,
                   help="cap on the default KV cache, as a fraction of free memory (on CPU also at most 2 GiB) "
                        "(default: %(default)s)")
    g.add_argument("--num-kv-blocks", type=int, default=None, help="KV cache size in blocks (overrides the others)")
    g.add_argument("--no-prefix-caching", action="store_true")
    g.add_argument("--cpu-cache-size", default=str(_D.cache.cpu_cache_bytes),
                   help="host-RAM tier for blocks evicted from the KV cache, in bytes (e.g. 4GiB; default off)")
    g.add_argument("--disk-cache-dir", default=None,
                   help="folder for the on-disk prefix cache, which survives restarts (default off)")
    g.add_argument("--disk-cache-size", default=f"{_D.cache.disk_cache_bytes // 2**30}GiB", help="bound on the disk cache, LRU (default: %(default)s)")
    g.add_argument("--max-num-batched-tokens", type=int, default=_D.scheduler.max_num_batched_tokens)
    g.add_argument("--max-num-seqs", type=int, default=_D.scheduler.max_num_seqs)
    g.add_argument("--max-model-len", type=int, default=_D.scheduler.max_model_len)
    g.add_argument("--speculative-config", type=_speculative_config, default=None, metavar="JSON",
                   help='speculative decoding, in vLLM\'s shape: \'{"method": "ngram", "num_speculative_tokens": 4, '
                        '"prompt_lookup_max": 4, "prompt_lookup_min": 2}\' (prompt lookup), or \'{"method": "mtp", '
                        '"num_speculative_tokens": 1}\' (a DeepSeek-V3/R1 checkpoint\'s MTP layer), or \'{"method": '
                        '"draft_model", "model": PATH, "num_speculative_tokens": 4}\'; greedy output '
                        'unchanged, sampled output keeps its distribution (default: off)')
    g.add_argument("--tensor-parallel-size", "-tp", type=int, default=_D.parallel.tensor_parallel_size,
                   help="shard the model over this many worker processes (one GPU each, or a share of the CPU "
                        "cores); Llama-family and DeepSeek V2/V3 models (default: %(default)s)")
    g.add_argument("--enable-expert-parallel", "-ep", action="store_true",
                   help="DeepSeek MoE: each tensor-parallel rank holds 1/N of the routed experts, whole, "
                        "instead of 1/N of every expert (default: off)")
    g.add_argument("--enable-dp-attention", action="store_true",
                   help="DeepSeek MoE: attention and its KV cache data-parallel over the tensor-parallel ranks "
                        "(each serves its own requests), experts expert-parallel (default: off)")
    g.add_argument("--data-parallel-size", "-dp", type=int, default=_D.parallel.data_parallel_size,
                   help="engine replicas behind one server, each with its own copy of the model and KV cache; "
                        "requests go to the replica caching their prefix, balanced by load (default: %(default)s)")
    g.add_argument("--distributed-executor-backend", default=None, choices=["uni", "mp", "ray"],
                   help="uni: the model in the engine's process; mp: worker processes on this machine; "
                        "ray: Ray actors in a Ray cluster, any number of nodes (pip install -e '.[ray]') "
                        "(default: uni for one device, mp for more)")
    g.add_argument("--generation-config", default=_D.generation_config,
                   help="sampling defaults for fields a request leaves out: auto: the model's "
                        "generation_config.json or GGUF sampling keys; vllm: jevons's own (temperature 1, ...); "
                        "or a folder holding a generation_config.json (default: %(default)s)")


def _speculative_config(text: str) -> SpeculativeConfig | None:
    try:
        return SpeculativeConfig.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def engine_config(a: argparse.Namespace, **override: Any) -> EngineConfig:
    """The engine flags as an EngineConfig (`override`: flat settings over them)."""
    return _engine_config(**(_engine_settings(a) | override))


def _engine_settings(a: argparse.Namespace) -> dict[str, Any]:
    return dict(
        model=a.model, dtype=a.dtype, device=a.device, load_format=a.load_format, quantization=a.quantization,
        deterministic=a.deterministic, block_size=a.block_size,
        kv_cache_bytes=None if a.kv_cache_bytes is None else int(a.kv_cache_bytes),
        kv_cache_memory_fraction=a.kv_cache_memory_fraction, num_kv_blocks=a.num_kv_blocks,
        enable_prefix_caching=not a.no_prefix_caching, max_num_batched_tokens=a.max_num_batched_tokens,
        max_num_seqs=a.max_num_seqs, max_model_len=a.max_model_len,
        cpu_cache_size=a.cpu_cache_size, disk_cache_dir=a.disk_cache_dir, disk_cache_size=a.disk_cache_size,
        generation_config=getattr(a, "generation_config", _D.generation_config),
        speculative_config=getattr(a, "speculative_config", None),
        tensor_parallel_size=getattr(a, "tensor_parallel_size", 1),
        data_parallel_size=getattr(a, "data_parallel_size", 1),
        enable_expert_parallel=getattr(a, "enable_expert_parallel", False),
        enable_dp_attention=getattr(a, "enable_dp_attention", False),
        distributed_executor_backend=getattr(a, "distributed_executor_backend", None),
    )


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling", "unset: the model's defaults (see --generation-config), else "
                                         "temperature 1, top_p 1, top_k off: the same defaults as `jevons serve`")
    g.add_argument("--max-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=None, help="0: greedy, the same answer every time")
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--min-p", type=float, default=None)
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)


def sampling_params(a: argparse.Namespace, defaults=None):
    """The flags over `defaults` (a GenerationDefaults; None: jevons's own)."""
    from jevons.loader.generation_config import GenerationDefaults

    return (defaults or GenerationDefaults()).sampling_params(
        max_tokens=a.max_tokens, temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, min_p=a.min_p,
        repetition_penalty=a.repetition_penalty, seed=a.seed)


def preflight(a: argparse.Namespace, command: str) -> bool:
    """The model, device and memory checks (jevons/preflight.py): on a failure,
    print one line and return False."""
    from jevons.preflight import PreflightError, preflight_engine

    try:
        preflight_engine(engine_config(a))
    except PreflightError as e:
        print(f"jevons {command}: {e}", file=sys.stderr)
        return False
    return True
