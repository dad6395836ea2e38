"""Per-request sampling settings, named and defaulted as vLLM names them so that
scripts port with an import change."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

# Bounds that keep every value representable where the engine puts it (int64
# tensors, torch generators) and say so by name instead of failing a step.
MAX_COUNT = 2**31 - 1  # top_k, max_tokens, min_tokens, max_reasoning_tokens
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # OpenAI's seed is an int64
MAX_REPETITION_PENALTY = 100.0


@dataclass(frozen=True)
class StructuredOutputsParams:
    """A constraint on the output, enforced by grammar (jevons/structured/):
    exactly one of a JSON schema (a dict or its JSON text), any JSON object,
    a regex, a choice of strings, or an EBNF grammar (GBNF/xgrammar syntax),
    named as vLLM names them. `after_reasoning`: the constraint starts after
    the model's `</think>`, so a reasoning model thinks freely first."""

    json: dict[str, Any] | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | list[str] | None = None
    grammar: str | None = None
    # xgrammar's structural tag (JSON): free text with schema-held segments
    # after trigger strings (tool calls in the model's own format).
    structural_tag: str | None = None
    after_reasoning: bool = False
    # Which request field asked for it, so a bad schema's 400 names that field.
    param: str = "structured_outputs"

    def __post_init__(self) -> None:
        kinds = [k for k in ("json", "regex", "choice", "grammar", "structural_tag") if getattr(self, k) is not None]
        kinds += ["json_object"] if self.json_object else []
        if len(kinds) != 1:
            raise _bad(self.param, "must set exactly one of json, json_object, regex, choice, grammar, structural_tag "
                                   f"(got {kinds or 'none'})")
        if self.choice is not None:
            if not self.choice or not all(isinstance(c, str) for c in self.choice):
                raise _bad(self.param, "choice must be a non-empty list of strings")
            object.__setattr__(self, "choice", tuple(self.choice))

    @property
    def kind(self) -> str:
        return "json_object" if self.json_object else next(
            k for k in ("json", "regex", "choice", "grammar", "structural_tag") if getattr(self, k) is not None)


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None  # None: off; k: the sampled token plus the top k
    skip_special_tokens: bool = True
    # Reasoning models: after this many generated tokens inside <think>, the
    # engine forces the think block closed (see engine/reasoning.py).
    max_reasoning_tokens: int | None = None
    # OpenAI's logit_bias: token id -> a bias in [-100, 100] added to the logits
    # before sampling (+100 all but forces a token, -100 all but bans it).
    # Keys may be ints or, as JSON sends them, decimal strings.
    logit_bias: dict[int, float] | None = None
    # Grammar-constrained output (JSON schema, regex, choice, grammar).
    structured_outputs: StructuredOutputsParams | None = None
    stop_strings: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        if self.top_k == -1:
            self.top_k = 0
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        self.stop_strings = tuple(s for s in stops if s)
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.logit_bias = _parse_logit_bias(self.logit_bias) or None
        self._validate()

    def _validate(self) -> None:
        for name in ("n", "top_k", "min_tokens"):
            _int(name, getattr(self, name))
        for name in ("max_tokens", "seed", "logprobs", "max_reasoning_tokens"):
            if getattr(self, name) is not None:
                _int(name, getattr(self, name))
        for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
            _finite(name, getattr(self, name))
        if self.n < 1:
            raise _bad("n", f"must be at least 1, got {self.n}")
        if self.temperature < 0:
            raise _bad("temperature", f"must be non-negative, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise _bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if not 0 <= self.top_k <= MAX_COUNT:
            raise _bad("top_k", f"must be -1 (off) or in [1, {MAX_COUNT}], got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            raise _bad("min_p", f"must be in [0, 1], got {self.min_p}")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise _bad("presence_penalty", f"must be in [-2, 2], got {self.presence_penalty}")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise _bad("frequency_penalty", f"must be in [-2, 2], got {self.frequency_penalty}")
        if not 0 < self.repetition_penalty <= MAX_REPETITION_PENALTY:
            raise _bad("repetition_penalty", f"must be in (0, {MAX_REPETITION_PENALTY:g}], got {self.repetition_penalty}")
        if self.max_tokens is not None and not 1 <= self.max_tokens <= MAX_COUNT:
            raise _bad("max_tokens", f"must be in [1, {MAX_COUNT}], got {self.max_tokens}")
        if not 0 <= self.min_tokens <= MAX_COUNT or (self.max_tokens is not None and self.min_tokens > self.max_tokens):
            raise _bad("min_tokens", f"must be in [0, max_tokens], got {self.min_tokens}")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise _bad("logprobs", f"must be in [0, 20], got {self.logprobs}")
        if self.max_reasoning_tokens is not None and not 0 <= self.max_reasoning_tokens <= MAX_COUNT:
            raise _bad("max_reasoning_tokens", f"must be in [0, {MAX_COUNT}], got {self.max_reasoning_tokens}")
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:
            raise _bad("seed", f"must be a 64-bit signed integer, in [{SEED_MIN}, {SEED_MAX}], got {self.seed}")
        for t in self.stop_token_ids or ():
            if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0:
                raise _bad("stop_token_ids", f"must be token ids (non-negative integers), got {t!r}")
        for s in self.stop_strings:
            if not isinstance(s, str):
                raise _bad("stop", f"must be strings, got {s!r}")

    def check_vocab(self, vocab_size: int) -> None:
        """Token ids the model has no logit for (the engine would fail on them)."""
        if self.logit_bias:
            bad_ids = [t for t in self.logit_bias if t >= vocab_size]
            if bad_ids:
                raise _bad("logit_bias", f"has token id {bad_ids[0]}, outside the vocabulary [0, {vocab_size})")
        bad_stops = [t for t in self.stop_token_ids or () if t >= vocab_size]
        if bad_stops:
            raise _bad("stop_token_ids", f"has token id {bad_stops[0]}, outside the vocabulary [0, {vocab_size})")

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5

    @property
    def uses_penalties(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1.0


def _bad(field_name: str, why: str) -> ValueError:
    err = ValueError(f"{field_name} {why}")
    err.param = field_name  # type: ignore[attr-defined]
    return err


def _int(field_name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _bad(field_name, f"must be an integer, got {value!r}")


def _finite(field_name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise _bad(field_name, f"must be a finite number, got {value!r}")


def _parse_logit_bias(bias: dict[Any, Any] | None) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        tid = None
        if isinstance(key, int) and not isinstance(key, bool):
            tid = key
        elif isinstance(key, str) and key.isascii() and key.strip().isdigit():
            tid = int(key)
        if tid is None or tid < 0:
            raise _bad("logit_bias", f"keys must be token ids (non-negative integers), got {key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _bad("logit_bias", f"values must be numbers, got {value!r} for token {key}")
        if not -100 <= value <= 100:
            raise _bad("logit_bias", f"values must be in [-100, 100], got {value} for token {key}")
        out[tid] = float(value)
    return out
