"""Opening a resolved model (loader/resolve.py): its checkpoint and its
tokenizer, by file format. Here, not beside the base classes, so that the
formats' modules import the base classes and nothing imports back."""
from __future__ import annotations

from jevons.loader.checkpoint import Checkpoint
from jevons.loader.resolve import ResolvedModel
from jevons.loader.tokenizer import Tokenizer, load_hf_tokenizer


def load_checkpoint(resolved: ResolvedModel) -> Checkpoint:
    # Imported here so that opening one format does not import the other's library.
    if resolved.format == "gguf":
        from jevons.loader.gguf_checkpoint import GGUFCheckpoint

        return GGUFCheckpoint(resolved.path)
    if resolved.format == "hf":
        from jevons.loader.safetensors_reader import SafetensorsCheckpoint

        return SafetensorsCheckpoint(resolved.path)
    raise ValueError(f"unknown checkpoint format {resolved.format!r}")


def load_tokenizer(resolved: ResolvedModel) -> Tokenizer:
    if resolved.format == "gguf":
        from jevons.loader.gguf_tokenizer import load_gguf_tokenizer

        return load_gguf_tokenizer(resolved.path, name=resolved.name)
    return load_hf_tokenizer(resolved.path, name=resolved.name)
