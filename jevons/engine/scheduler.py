"""The scheduler: one token-budget rule for every kind of work.

Each step has a budget of `max_num_batched_tokens`. Every running request
advances its computed-token count toward its token count by as much as the
budget allows: a decode needs 1, a prompt needs the rest of the prompt (in
chunks when it doesn't fit), a request resuming after preemption needs its
whole prefix again. Prefill and decode therefore mix in one batch with no
special cases. Running requests go first (FCFS), then waiting ones are
admitted while budget, sequence slots and blocks last. When blocks run out,
the newest running request is preempted: its blocks are freed and it will be
recomputed (through the prefix cache, often cheaply).

Speculative decoding is the same rule: a decoding request with k draft tokens
(from the proposer, runner/spec/) asks for 1 + k tokens, inside the budget and
only when its blocks are there for the taking (drafts never preempt anyone).
`update` then appends the tokens engine/stopping.py kept (none past the first
that finishes the request) and gives back the slots of rejected drafts.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from jevons.config import SchedulerConfig
from jevons.engine.kv_cache_manager import KVCacheManager
from jevons.engine.request import Request, RequestStatus
from jevons.engine.stopping import Verdict
from jevons.runner.spec.proposer import Proposer
from jevons.runner.spec.stats import SpecDecodeStats
from jevons.runner.step_io import RunnerInput, RunRequest


@dataclass
class ScheduledRequest:
    request: Request
    num_tokens: int  # tokens fed this step
    context_len: int  # tokens already in the cache
    block_ids: list[int]
    draft_token_ids: list[int] = field(default_factory=list)  # fed after the known tokens, counted in num_tokens

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the end of the known tokens (so the step
        produces a new token for it)."""
        return self.context_len + self.num_tokens - len(self.draft_token_ids) == self.request.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


def runner_input(scheduled: list[ScheduledRequest], banned: dict[str, list[int]] | None = None) -> RunnerInput:
    """What the runner needs of each scheduled request, and nothing of the
    engine's own objects: the tokens to feed, where they go, and, for a request
    that samples, its settings (token history only when it uses penalties)."""
    banned = banned or {}
    out = RunnerInput()
    for s in scheduled:
        req = s.request
        known = s.num_tokens - len(s.draft_token_ids)
        r = RunRequest(req.request_id, req.all_token_ids[s.context_len : s.context_len + known] + s.draft_token_ids,
                       s.context_len, s.block_ids, num_drafts=len(s.draft_token_ids))
        if not s.samples:
            r.next_token_id = req.all_token_ids[s.context_len + s.num_tokens]
        if s.samples:
            r.samples, r.params, r.generator = True, req.params, req.generator
            r.banned = banned.get(req.request_id, [])
            if req.params.uses_penalties:
                r.prompt_ids, r.output_ids = req.prompt_token_ids, req.output_token_ids
        out.requests.append(r)
    return out


MAX_SPEC_BACKOFF = 8  # steps a request goes without drafts after repeated misses, at most


class Scheduler:
    def __init__(self, cfg: SchedulerConfig, kv: KVCacheManager, max_model_len: int,
                 proposer: Proposer | None = None, runner_drafts: bool = False) -> None:
        self.cfg = cfg
        self.proposer = proposer
        # Drafts made by the runner (MTP) and left on Request.spec_token_ids.
        self.runner_drafts = runner_drafts
        self.spec_stats = SpecDecodeStats()
        self.kv = kv
        self.max_model_len = max_model_len
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    # --- queue --------------------------------------------------------------
    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, req: Request, reason: str, stop_reason: int | str | None = None) -> None:
        """Finish (or abort) a request wherever it is and free its blocks."""
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        if not req.is_finished:
            req.finish(reason, stop_reason)
        self.kv.free(req)

    # --- one step -----------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.cfg.max_num_batched_tokens
        chosen: list[tuple[Request, int]] = []
        drafts: dict[str, list[int]] = {}

        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if n == req.num_tokens - req.num_computed_tokens == 1:
                d = self._propose(req, budget - 1)
                if d and self.kv.allocate(req, 1 + len(d)):
                    drafts[req.request_id] = d
                    n += len(d)
            while not self.kv.allocate(req, n):
                victim = self.running.pop()
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is req:
                    break
            if req.status is not RequestStatus.RUNNING:
                break
            chosen.append((req, n))
            budget -= n
            i += 1

        # Admitting new work right after preempting would just thrash.
        while not out.preempted and self.waiting and budget > 0 and len(self.running) < self.cfg.max_num_seqs:
            req = self.waiting[0]
            leader = req.leader
            if leader is not None and not leader.is_finished and leader.num_computed_tokens < leader.num_prompt_tokens:
                break  # wait one step for the leader's prompt blocks to be cached
            cached = self.kv.find_cached_prefix(req) if req.num_computed_tokens == 0 else []
            start = len(cached) * self.kv.block_size
            n = min(req.num_tokens - start, budget)
            if not self.kv.allocate(req, n, cached):
                break
            self.waiting.popleft()
            self.kv.prefix_queries += req.num_tokens
            self.kv.prefix_hits += start
            req.num_computed_tokens = start
            if req.num_preemptions == 0:
                req.num_cached_tokens = start
            req.status = RequestStatus.RUNNING
            if req.first_scheduled_time is None:
                req.first_scheduled_time = time.monotonic()
            self.running.append(req)
            chosen.append((req, n))
            budget -= n

        for req, n in chosen:
            out.scheduled.append(ScheduledRequest(req, n, req.num_computed_tokens, self.kv.block_ids(req.request_id),
                                                  drafts.get(req.request_id, [])))
        return out

    def _propose(self, req: Request, budget: int) -> list[int]:
        """Draft tokens for a decoding request: none that could outrun its
        max_tokens or the context, or the step's budget."""
        if (self.proposer is None and not self.runner_drafts) or not req.may_speculate:
            return []
        room = min(budget, req.max_tokens - req.num_output_tokens - 1, self.max_model_len - req.num_tokens - 1)
        if room <= 0:
            return []
        if req.spec_skip > 0:
            req.spec_skip -= 1
            return []
        if self.proposer is None:
            return req.spec_token_ids[:room]
        return self.proposer.propose(req.all_token_ids, room)

    def _preempt(self, req: Request) -> None:
        self.kv.free(req)
        req.status = RequestStatus.PREEMPTED
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def update(self, out: SchedulerOutput, verdicts: dict[str, Verdict]) -> dict[Request, list[int]]:
        """Advance computed counts and append each request's kept tokens (the
        accepted drafts, then the target's own draw, cut at the first that
        stops it: engine/stopping.py decided which), finishing those whose
        verdict says so. Returns each request that got tokens this step with
        the tokens it kept, in order."""
        advanced: dict[Request, list[int]] = {}
        for s in out.scheduled:
            req = s.request
            if req.is_finished:  # aborted while the step ran
                continue
            k = len(s.draft_token_ids)
            v = verdicts.get(req.request_id)
            if v is None or not v.tokens:
                req.num_computed_tokens += s.num_tokens - k
                self.kv.cache_computed_blocks(req)
                if k:
                    self.kv.trim(req)
                continue
            if k:
                self.spec_stats.record(k, v.num_sampled - 1)
                # Adaptive: after a verify that kept no draft, skip the next 1, 2,
                # 4 .. MAX_SPEC_BACKOFF chances to draft (a miss costs a wider
                # forward for nothing); any accepted draft resets it.
                req.spec_backoff = 0 if v.num_sampled > 1 else min(2 * req.spec_backoff or 1, MAX_SPEC_BACKOFF)
                req.spec_skip = req.spec_backoff
            # The fed tokens and the kept drafts (all kept tokens but the last)
            # are in the cache now; the last token is not.
            for token in v.tokens:
                req.append_token(token)
            # Only tokens that are both computed and kept enter the prefix cache.
            req.num_computed_tokens = min(req.num_computed_tokens + s.num_tokens - k + len(v.tokens) - 1,
                                          req.num_tokens - 1)
            self.kv.cache_computed_blocks(req)
            if req.first_token_time is None:
                req.first_token_time = time.monotonic()
            advanced[req] = v.tokens
            if v.finish is not None:
                self.finish(req, v.finish.reason, v.finish.stop_reason)
            elif k:
                self.kv.trim(req)  # blocks that held only rejected drafts go back
        return advanced
