"""A model's own sampling defaults, and the one place every front end gets its
defaults from (the server, `LLM`, `jevons chat` / `generate`).

Hugging Face model folders carry them in `generation_config.json`; GGUF files
in llama.cpp's `general.sampling.*` keys. As in vLLM, a field a request leaves
out takes the model's value, else jevons's own (OpenAI's: temperature 1, top_p
1, ...); `mode="vllm"` ignores the model's values. `max_new_tokens` is not a
default here: a request's length is the request's business. `do_sample` is
ignored, as vLLM ignores it: a model that ships a temperature means it.
"""
from __future__ import annotations

import json
import logging
import math
import pathlib
from dataclasses import dataclass
from typing import Any

from jevons.sampling_params import SamplingParams

log = logging.getLogger("jevons")

# What a field defaults to when neither the request nor the model says.
JEVONS_DEFAULTS: dict[str, float | int] = {
    "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
}
KEYS = tuple(JEVONS_DEFAULTS)

# llama.cpp's keys (gguf.constants.Keys.General.SAMPLING_*), written by its
# converter from generation_config.json. Mirostat, XTC and the sampler order
# have no counterpart here; penalty_last_n neither (jevons's repetition penalty
# covers the whole context).
GGUF_KEYS: dict[str, str] = {
    "general.sampling.temp": "temperature",
    "general.sampling.top_p": "top_p",
    "general.sampling.top_k": "top_k",
    "general.sampling.min_p": "min_p",
    "general.sampling.penalty_repeat": "repetition_penalty",
}


@dataclass(frozen=True)
class GenerationDefaults:
    """The model's sampling defaults; None where the model says nothing."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    source: str = "jevons"  # the file the values came from, or "jevons" when none

    def model_values(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in KEYS if getattr(self, k) is not None}

    def resolve(self, **requested: Any) -> dict[str, Any]:
        """The five defaulted fields: the request's value, else the model's, else jevons's."""
        out = {}
        for k in KEYS:
            v = requested.get(k)
            if v is None:
                v = getattr(self, k)
            out[k] = JEVONS_DEFAULTS[k] if v is None else v
        return out

    def sampling_params(self, **kwargs: Any) -> SamplingParams:
        """SamplingParams(**kwargs) with None in a defaulted field meaning "default"."""
        return SamplingParams(**{**kwargs, **self.resolve(**kwargs)})

    def describe(self) -> str:
        values = self.resolve()
        return " ".join(f"{k}={values[k]}" for k in KEYS) + f" (defaults from {self.source})"


def _coerce(values: dict[str, Any], source: str) -> GenerationDefaults:
    """Keep the values SamplingParams accepts; log and drop the others."""
    kept: dict[str, Any] = {}
    for k, v in values.items():
        try:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{k} must be a number, got {v!r}")
            v = int(v) if k == "top_k" else float(v)
            if k == "top_k" and v < 0:
                v = 0  # -1 and friends: off
            SamplingParams(**{k: v})  # the same range checks as a request
        except ValueError as e:
            log.warning("ignoring %s in %s: %s", k, source, e)
            continue
        kept[k] = v
    return GenerationDefaults(**kept, source=source) if kept else GenerationDefaults()


def from_hf_file(path: pathlib.Path) -> GenerationDefaults:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("ignoring %s: %s", path, e)
        return GenerationDefaults()
    if not isinstance(data, dict):
        return GenerationDefaults()
    return _coerce({k: data[k] for k in KEYS if data.get(k) is not None}, str(path))


def from_gguf(path: pathlib.Path) -> GenerationDefaults:
    from jevons.loader.gguf_reader import open_gguf  # cached: the loader parsed it already

    meta = open_gguf(path).metadata
    return _coerce({name: meta[key] for key, name in GGUF_KEYS.items() if meta.get(key) is not None}, str(path))


def read_generation_defaults(model_path: pathlib.Path | str | None, mode: str = "auto") -> GenerationDefaults:
    """mode "auto": the model's own file (generation_config.json beside config.json,
    or the GGUF's metadata); "vllm": none, jevons's defaults only; anything else:
    a folder holding a generation_config.json (or the file itself)."""
    if mode == "vllm":
        return GenerationDefaults()
    if mode != "auto":
        p = pathlib.Path(mode).expanduser()
        f = p / "generation_config.json" if p.is_dir() else p
        if not f.is_file():
            raise FileNotFoundError(f"--generation-config {mode}: no generation_config.json there")
        return from_hf_file(f)
    if model_path is None:  # a config-only preset with random weights
        return GenerationDefaults()
    p = pathlib.Path(model_path)
    if p.is_dir():
        f = p / "generation_config.json"
        return from_hf_file(f) if f.is_file() else GenerationDefaults()
    if p.suffix.lower() == ".gguf" and p.is_file():
        return from_gguf(p)
    return GenerationDefaults()


def log_defaults(d: GenerationDefaults) -> None:
    if d.model_values():
        log.info("sampling defaults from the model's %s: %s (a request's own values win)",
                 pathlib.Path(d.source).name, d.model_values())

