"""One sequence's state as the scheduler sees it (when it stops is
engine/stopping.py's decision).

A user request with n > 1 becomes n of these (one per choice) that share the
prompt's KV blocks through the prefix cache.
"""
from __future__ import annotations

import enum
import time

import torch

from jevons.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"


class Request:
    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        max_tokens: int,
        eos_token_ids: frozenset[int],
        parent_id: str | None = None,
        index: int = 0,
        seed: int | None = None,
        leader: "Request | None" = None,
    ) -> None:
        self.request_id = request_id
        self.parent_id = parent_id or request_id
        self.index = index
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.max_tokens = max_tokens
        self.eos_token_ids = frozenset() if params.ignore_eos else eos_token_ids
        self.stop_token_ids = frozenset(params.stop_token_ids or ())
        self.output_token_ids: list[int] = []
        self.all_token_ids: list[int] = list(prompt_token_ids)
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache
        self.status = RequestStatus.WAITING
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.num_preemptions = 0
        # Siblings of an n > 1 request wait for the leader's prefill so that
        # they attach its prompt blocks instead of recomputing them.
        self.leader = leader
        self.generator: torch.Generator | None = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(seed)
        self.arrival_time = time.monotonic()
        self.first_scheduled_time: float | None = None
        self.first_token_time: float | None = None
        # Filled by the KV cache manager: hashes of this sequence's full blocks.
        self.block_hashes: list[bytes] = []
        # Drafts for the tokens after the last one, when the runner proposes them (MTP).
        self.spec_token_ids: list[int] = []
        # Adaptive speculation (Scheduler.update): steps to go without drafts, and the current backoff.
        self.spec_skip = 0
        self.spec_backoff = 0

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    @property
    def may_speculate(self) -> bool:
        """Whether drafts may be verified for this request now. Not while
        min_tokens still bans EOS (the ban would differ per draft row), nor
        under a reasoning budget (it rewrites tokens after sampling), nor
        under a grammar (each draft row would need the mask of the state after
        the drafts before it, and the matcher a rollback on rejection)."""
        p = self.params
        return (self.num_output_tokens >= p.min_tokens and p.max_reasoning_tokens is None
                and getattr(p, "structured_outputs", None) is None)

    def append_token(self, token: int) -> None:
        self.output_token_ids.append(token)
        self.all_token_ids.append(token)

    def finish(self, reason: str, stop_reason: int | str | None) -> None:
        self.status = RequestStatus.FINISHED
        self.finish_reason = reason
        self.stop_reason = stop_reason

    def __repr__(self) -> str:
        return f"Request({self.request_id}, {self.status.value}, computed={self.num_computed_tokens}/{self.num_tokens})"
