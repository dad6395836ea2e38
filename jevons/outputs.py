"""What generate() returns, shaped like vLLM's RequestOutput."""
from __future__ import annotations

from dataclasses import dataclass, field


class Logprob(float):
    """A token's log-probability. It is a float (so `lp[token]` works as a number)
    and also carries vLLM's attributes `.logprob`, `.rank`, `.decoded_token`."""

    rank: int | None
    decoded_token: str | None
    token_bytes: bytes | None  # the raw bytes (decoded_token is U+FFFD for part of a character)

    def __new__(cls, value: float, rank: int | None = None, decoded_token: str | None = None,
                token_bytes: bytes | None = None) -> "Logprob":
        obj = super().__new__(cls, value)
        obj.rank = rank
        obj.decoded_token = decoded_token
        obj.token_bytes = token_bytes
        return obj

    @property
    def logprob(self) -> float:
        return float(self)


TokenLogprobs = dict[int, Logprob]


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop string or token that ended it
    logprobs: list[TokenLogprobs] | None = None
    cumulative_logprob: float | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    num_cached_tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
