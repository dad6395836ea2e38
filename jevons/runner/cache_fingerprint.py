"""The fingerprint that ties cached KV to what computed it.

KV values are only valid for the exact weights, architecture config, dtype,
weight quantization, kernel mode (--deterministic's row tiles round
differently), block size, cache layout and device type that produced them. The fingerprint
digests all of these; it is the block hashes' extra key (so a lookup can only
find this configuration's blocks), the name of the disk tier's folder, and a
field checked in every cache file's header.

Weight files are identified by name, size and mtime rather than by hashing
their contents: hashing gigabytes at every start would cost more than most
prefills it saves. A model re-saved in place therefore gets a new fingerprint
(a cold cache, never a wrong one).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from jevons.config import ModelConfig

# Bump when anything about what a cached block means changes.
FINGERPRINT_VERSION = 2  # 2: quantization and the deterministic mode count
_WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")


def _weight_files(path: Path) -> list[tuple[str, int, int]]:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
    out = []
    for f in files:
        st = f.stat()
        out.append((f.name, st.st_size, st.st_mtime_ns))
    return out


def cache_fingerprint(
    model_path: str | Path,
    model_config: ModelConfig,
    dtype: torch.dtype,
    block_size: int,
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
    load_format: str = "auto",
    quantization: str = "none",
    deterministic: bool = False,
) -> bytes:
    path = Path(model_path).resolve()
    doc = {
        "version": FINGERPRINT_VERSION,
        "model_path": str(path),
        "weights": _weight_files(path) if path.exists() else [],
        "load_format": load_format,
        "architecture": model_config.architecture,
        "config": model_config.hf,
        "dtype": str(dtype),
        # The weights the KV was computed with, as the engine serves them.
        "quantization": quantization,
        "deterministic": deterministic,
        "block_size": block_size,
        # Per layer, the per-block shape and dtype of K and V (not the block count).
        "layout": [[list(t.shape[1:]), str(t.dtype)] for pair in kv_caches for t in pair],
        # KV computed on another device type differs in rounding.
        "device": kv_caches[0][0].device.type if kv_caches else "cpu",
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).digest()
