"""What crosses between the engine and the runner each step: the runner's
input (per scheduled request, what to feed and how to sample) and its output
(per request that sampled, its token and logprobs), keyed by request id.

A leaf module: plain dataclasses over ints, lists and SamplingParams, so the
runner needs nothing from engine/ and the same objects can later be pickled
to a worker process."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from jevons.sampling_params import SamplingParams


@dataclass
class RunRequest:
    """One scheduled request in a step."""

    request_id: str
    token_ids: list[int]  # the tokens fed this step (a prompt chunk, or the last sampled token)
    context_len: int  # tokens already in the cache before them
    block_ids: list[int]  # the request's block table
    samples: bool = False  # whether this chunk reaches the end of the known tokens (a token is drawn)
    params: SamplingParams | None = None  # when it samples
    # The request's own generator (seeded sampling), advanced in place by the
    # draw; the engine rewinds it when a batch is rerun. In process this is the
    # object itself; a worker process would carry the seed and the number of
    # draws so far instead (torch.Generator's state is a tensor, but sharing
    # it by reference is what keeps a seed's tokens the same whatever the batch).
    generator: torch.Generator | None = None
    # Only when the request's params use penalties (repetition, presence, frequency).
    prompt_ids: list[int] | None = None
    output_ids: list[int] | None = None
    banned: list[int] = field(default_factory=list)  # masked this step (EOS and stop ids before min_tokens)
    # Grammar-constrained requests: the tokens allowed this step as a packed
    # bitmask (int32 words, bit j of word w = token 32*w + j), from jevons/structured/.
    grammar_mask: torch.Tensor | None = None
    # Speculative decoding: the last num_drafts of token_ids are draft tokens;
    # every one of the 1 + num_drafts last rows is sampled and verified.
    num_drafts: int = 0
    # The token after the fed ones when this chunk does not sample (the next
    # prompt token): an MTP proposer needs each position's next token.
    next_token_id: int | None = None


@dataclass
class RunnerInput:
    requests: list[RunRequest] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(len(r.token_ids) for r in self.requests)


@dataclass
class SampledToken:
    """One request's draw: the token, and when asked for, its logprob, its
    rank (1 = most likely) and the top logprobs (the widest asked for in the
    batch; the engine trims to the request's own count)."""

    token: int
    logprob: float | None = None
    rank: int | None = None
    top_ids: list[int] | None = None
    top_logprobs: list[float] | None = None
    # On a request's last new token: drafts for the tokens after it (from a
    # proposer that runs in the runner, MTP); the scheduler verifies them next step.
    drafts: list[int] | None = None


@dataclass
class RunnerOutput:
    sampled: dict[str, SampledToken] = field(default_factory=dict)  # request id -> its draw, in row order
    # Requests that had drafts: all their new tokens this step, in order (the
    # accepted drafts, then the correction or bonus draw); sampled[id] is the first.
    spec: dict[str, list[SampledToken]] = field(default_factory=dict)

    def tokens(self, request_id: str) -> list[SampledToken]:
        """A request's new tokens this step ([] when it did not sample)."""
        if request_id in self.spec:
            return self.spec[request_id]
        return [self.sampled[request_id]] if request_id in self.sampled else []
