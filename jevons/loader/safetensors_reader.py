"""Hugging Face checkpoint folders: config.json plus one or many .safetensors files.

Tensor names pass through untouched, so any architecture (Llama, Qwen2,
DeepSeek with `mlp.experts.{i}.*` and FP8 `weight_scale_inv`) streams through
the same code. Each shard is opened once and read tensor by tensor.
"""
from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import torch
from safetensors import safe_open

from jevons.loader.checkpoint import Checkpoint, convert_for_load

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _shard_plan(folder: pathlib.Path) -> dict[pathlib.Path, list[str]]:
    """Map each shard file to the tensor names it holds, in a stable order."""
    index = folder / _INDEX
    if index.is_file():
        weight_map: dict[str, str] = _read_json(index)["weight_map"]
        plan: dict[pathlib.Path, list[str]] = {}
        for name, shard in weight_map.items():
            plan.setdefault(folder / shard, []).append(name)
        missing = [p.name for p in plan if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shards that are not in {folder}: {missing}")
        return plan
    files = [folder / _SINGLE] if (folder / _SINGLE).is_file() else sorted(folder.glob("*.safetensors"))
    if not files:
        found = "pytorch_model.bin only; convert it to safetensors" if any(folder.glob("*.bin")) else "none"
        raise FileNotFoundError(f"no .safetensors weights in {folder} (found: {found})")
    plan = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            plan[path] = list(f.keys())
    return plan


class SafetensorsCheckpoint(Checkpoint):
    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = pathlib.Path(folder)
        self.config: dict[str, Any] = _read_json(self.folder / "config.json")
        self._plan = _shard_plan(self.folder)

    def tensor_names(self) -> list[str]:
        return [name for names in self._plan.values() for name in names]

    def iter_weights(self, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
        for path, names in self._plan.items():
            # safe_open memory-maps the shard; get_tensor materializes one tensor.
            with safe_open(str(path), framework="pt") as f:
                for name in names:
                    yield name, convert_for_load(name, f.get_tensor(name), dtype)
