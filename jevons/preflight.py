"""Fail fast, fail clearly: what `jevons serve` (and generate, chat) checks
before it opens a socket or loads a weight.

Each check is a small function that takes its inputs (a meminfo text, whether
CUDA is there) so tests can hand them in, and raises `PreflightError` with one
line the command prints instead of a traceback:

- the model: a local path or the built-in alias; a config-only preset needs
  `--load-format dummy` (it has no weights);
- the device: `cuda` needs a CUDA device;
- the port: bound and released at once, as uvicorn will bind it;
- memory: the weights (parameters counted from the config, times the bytes of
  the dtype and quantization) plus the KV cache (the engine's own sizing rule,
  runner/kv_cache.py) against MemAvailable, or the GPU's free memory.
"""
from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # config imports torch; the checks here stay light until they need it
    from jevons.config import EngineConfig

GiB = 2**30


class PreflightError(Exception):
    """A setting that cannot work; its message is one line for the user."""


@dataclass(frozen=True)
class ModelSource:
    """What the engine will load, known without loading it."""

    name: str
    config: dict[str, Any]  # Hugging Face config.json keys
    stored_bits: int | None  # 4 or 8 for a quantized GGUF
    preset: bool  # a config-only preset with random weights


def _is_preset(name: str) -> bool:
    from jevons.loader.presets import list_presets
    from jevons.loader.resolve import SMOLLM2_ALIAS

    key = name.strip().lower()
    return key in {p.lower() for p in list_presets()} and key != SMOLLM2_ALIAS


def check_model(model: str, load_format: str = "auto", hf_overrides: dict[str, Any] | None = None) -> ModelSource:
    """Resolve the model as EngineCore will, reading its config but no weights."""
    from jevons.loader.presets import get_preset
    from jevons.loader.resolve import ModelNotFoundError, resolve_model

    preset_name = _is_preset(model) and not Path(model).exists()
    if preset_name and load_format == "dummy":
        return ModelSource(model, {**get_preset(model), **(hf_overrides or {})}, None, True)
    try:
        resolved = resolve_model(model)
    except ModelNotFoundError as e:
        if preset_name:
            raise PreflightError(
                f"{model!r} is a config-only preset (its published config.json, no weights); run it with "
                f"random weights: jevons serve --model {model} --load-format dummy") from None
        raise PreflightError(str(e)) from None
    from jevons.loader.load import load_checkpoint

    try:
        ckpt = load_checkpoint(resolved)
        stored_bits = ckpt.stored_bits()
    except Exception as e:  # a damaged file: say which and why, in one line
        raise PreflightError(f"can't read model {resolved.path}: {type(e).__name__}: {e}") from None
    return ModelSource(resolved.name, {**ckpt.config, **(hf_overrides or {})}, stored_bits, False)


def check_device(device: str, cuda_available: bool | None = None, cuda_count: int | None = None) -> None:
    """`cpu`, or `cuda[:N]` on a machine with that CUDA device."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise PreflightError(f"unknown device {device!r}; use cpu or cuda (cuda:N)") from None
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        raise PreflightError(f"device {device!r} is not supported; use cpu or cuda (cuda:N)")
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        why = "this PyTorch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise PreflightError(f"--device {device}: {why}; run with --device cpu")
    if cuda_count is None:
        cuda_count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= cuda_count:
        raise PreflightError(f"--device {device}: this machine has {cuda_count} CUDA device(s), "
                             f"cuda:0 to cuda:{cuda_count - 1}")


def check_port(host: str, port: int) -> None:
    """Bind (host, port) the way uvicorn will (SO_REUSEADDR) and let it go."""
    if not 0 <= port <= 65535:
        raise PreflightError(f"--port {port} is not a TCP port (0 to 65535)")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise PreflightError(f"--host {host!r} is not an address this machine can listen on ({e.strerror})") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PreflightError(f"port {port} on {host} is already in use (another server?); "
                                     f"choose a free one with --port") from None
            raise PreflightError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def available_memory(device_type: str, meminfo: str | None = None, cuda_free: int | None = None,
                     device_index: int = 0) -> int | None:
    """Bytes the model may use: the GPU's free memory, or MemAvailable from
    /proc/meminfo (None when neither can be read)."""
    if device_type == "cuda":
        if cuda_free is None:
            import torch

            cuda_free = int(torch.cuda.mem_get_info(device_index)[0])
        return cuda_free
    from jevons.runner.kv_cache import meminfo_available

    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            return None
    return meminfo_available(meminfo)


# Bytes per quantized weight: int8 or int4 values plus a scale and zero per group of 32.
_QUANT_BYTES = {"int8": 1.125, "int4": 0.625}


def weight_bytes(config: dict[str, Any], dtype_bytes: int, quantization: str = "none") -> int:
    """The model's weights in memory: every parameter in the run's dtype, plus
    (int8, int4) or instead of (-compact) its linear weights, a quantized copy."""
    from jevons.cost.model_stats import model_stats

    stats = model_stats(config)
    dense = stats.total_params * dtype_bytes
    kind = quantization.removesuffix("-compact")
    if kind not in _QUANT_BYTES:
        return dense
    linear = stats.total_params - stats.embedding_params  # the input table stays dense
    quantized = int(linear * _QUANT_BYTES[kind])
    if quantization.endswith("-compact"):
        return stats.embedding_params * dtype_bytes + quantized
    return dense + quantized


def kv_cache_bytes(config: dict[str, Any], dtype_bytes: int, engine: EngineConfig, available: int,
                   device_type: str) -> int:
    """The KV cache the engine will allocate, by its own rule (runner/kv_cache.py)."""
    from jevons.cost.model_stats import model_stats
    from jevons.runner.kv_cache import default_cache_bytes

    per_token = int(model_stats(config).kv_bytes_per_token(dtype_bytes))
    positions = int(config.get("max_position_embeddings", 4096))
    max_model_len = min(engine.scheduler.max_model_len or positions, positions)
    seqs = engine.scheduler.max_num_seqs
    cache = engine.cache
    bs = cache.block_size
    cap = (seqs * -(-max_model_len // bs) + 1) * bs * per_token  # the engine's cap: seqs full sequences
    if cache.num_blocks:
        return min(cache.num_blocks * bs * per_token, cap)
    if cache.cache_bytes:
        return min(cache.cache_bytes, cap)
    return default_cache_bytes(cache, per_token, seqs, max_model_len, available, device_type)


def check_memory(weights: int, kv: int, available: int, where: str) -> None:
    need = weights + kv
    if need > available:
        raise PreflightError(
            f"not enough memory: the weights (~{weights / GiB:.1f} GiB) and the KV cache (~{kv / GiB:.1f} GiB) "
            f"need ~{need / GiB:.1f} GiB but {where} has {available / GiB:.1f} GiB available; try a smaller model, "
            f"-q int8-compact or int4-compact, or less KV cache (--kv-cache-bytes, --max-model-len, --max-num-seqs)")


def _quantization(requested: str, stored_bits: int | None, dtype_bytes: int, device_type: str) -> str:
    """What "auto" will most likely be (models/layers/linear.py resolve_quantization)."""
    if requested != "auto":
        return requested
    return "int4" if stored_bits == 4 and dtype_bytes == 2 and device_type == "cpu" else "none"


def preflight_engine(engine: EngineConfig, meminfo: str | None = None) -> ModelSource:
    """The model, the device and memory, for any command that builds an engine."""
    import torch

    from jevons.config import parse_dtype

    device = engine.device
    source = check_model(engine.model, engine.load_format, engine.hf_overrides)
    check_device(device)
    try:
        dtype = parse_dtype(engine.dtype, device)
    except ValueError as e:
        raise PreflightError(str(e)) from None
    dtype_bytes = torch.tensor([], dtype=dtype).element_size()
    dev = torch.device(device)
    available = available_memory(dev.type, meminfo, device_index=dev.index or 0)
    if available is None:
        return source
    try:
        quant = _quantization(engine.quantization, source.stored_bits, dtype_bytes, dev.type)
        weights = weight_bytes(source.config, dtype_bytes, quant)
        kv = kv_cache_bytes(source.config, dtype_bytes, engine, available, dev.type)
    except (KeyError, TypeError, ValueError):
        return source  # a config the estimate does not understand: the engine will say more
    check_memory(weights, kv, available, device if dev.type == "cuda" else "this machine")
    return source


def preflight_serve(engine: EngineConfig, host: str, port: int, meminfo: str | None = None) -> ModelSource:
    """Everything `jevons serve` checks before it opens its socket."""
    source = preflight_engine(engine, meminfo)
    check_port(host, port)
    return source
