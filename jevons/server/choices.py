"""Per-choice bookkeeping for one HTTP request: engine deltas in, OpenAI-shaped
pieces out (reasoning vs. content, tokens, logprobs, finish reason), plus the
usage totals and the latency metrics they imply. Shared by the chat and
completions routes, streaming or not."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from jevons.engine.async_engine import StepEvent
from jevons.outputs import TokenLogprobs
from jevons.server.metrics import ServerMetrics
from jevons.engine.reasoning import ReasoningParser
from jevons.server.tool_calls.base import ToolParser
from jevons.server.tool_calls.types import ToolCall
from jevons.server.billing import UsageCounter


@dataclass
class ChoiceDelta:
    index: int
    reasoning: str
    content: str
    token_ids: list[int]
    logprobs: list[TokenLogprobs] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)  # completed by this delta
    first_tool_index: int = 0  # the index (in the choice's calls) of tool_calls[0]


@dataclass
class ChoiceState:
    index: int
    parser: ReasoningParser | None
    content: str = ""
    reasoning: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    reasoning_tokens: int = 0
    last_token_at: float | None = None
    tool_parser: ToolParser | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)


class RequestTracker:
    """Choices are numbered prompt-major: choice = prompt_index * n + seq_index,
    as OpenAI numbers them for a batch of completion prompts."""

    def __init__(
        self,
        metrics: ServerMetrics,
        n: int,
        prompt_lens: list[int],
        parser_for: Callable[[int], ReasoningParser | None] = lambda _: None,
        stop_token_hidden: Callable[[int], bool] = lambda _: False,
        tool_parser_for: Callable[[], ToolParser | None] = lambda: None,
    ) -> None:
        self.metrics = metrics
        self.stop_token_hidden = stop_token_hidden  # logprobs.stop_token_hidden
        self.n = n
        self.choices = [ChoiceState(p * n + i, parser_for(p), tool_parser=tool_parser_for())
                        for p in range(len(prompt_lens)) for i in range(n)]
        self.prompt_lens = prompt_lens
        self.cached = [0] * len(prompt_lens)

    def on_event(self, prompt_index: int, ev: StepEvent) -> list[ChoiceDelta]:
        self.cached[prompt_index] = max(self.cached[prompt_index], ev.num_cached_tokens)
        now = time.monotonic()
        out = []
        for d in ev.deltas:
            c = self.choices[prompt_index * self.n + d.index]
            final = d.finish_reason is not None
            if c.parser is not None:
                was = c.parser.in_reasoning
                reasoning, content = c.parser.feed(d.text, final)
                if was or c.parser.in_reasoning:
                    c.reasoning_tokens += len(d.token_ids)
            else:
                reasoning, content = "", d.text
            calls: list[ToolCall] = []
            first_call = len(c.tool_calls)
            if c.tool_parser is not None:  # the answer (never the reasoning) is read for tool calls
                content, calls = c.tool_parser.feed(content, final)
                c.tool_calls.extend(calls)
            finish = d.finish_reason
            if final and c.tool_calls and finish == "stop":
                finish = "tool_calls"
            c.reasoning += reasoning
            c.content += content
            c.token_ids.extend(d.token_ids)
            lps = d.logprobs
            if (lps and final and d.finish_reason == "stop" and not isinstance(d.stop_reason, str)
                    and len(lps) == len(d.token_ids) and self.stop_token_hidden(d.token_ids[-1])):
                # The EOS / end-of-turn token whose text the content leaves out: no logprob entry,
                # so the entries spell the content (as OpenAI's). token_ids keep it for usage.
                lps = lps[:-1]
            if lps:
                c.logprobs.extend(lps)
            if d.token_ids:
                if c.last_token_at is not None:
                    self.metrics.inter_token((now - c.last_token_at) / len(d.token_ids), len(d.token_ids))
                c.last_token_at = now
            if final:
                c.finish_reason, c.stop_reason = finish, d.stop_reason
                self.metrics.finished(finish or "stop")
            out.append(ChoiceDelta(c.index, reasoning, content, d.token_ids, lps, finish, d.stop_reason, calls,
                                   first_call))
        if ev.finished and ev.timings:
            self.metrics.request_timings(ev.timings)
        return out

    def abandon(self) -> None:
        """The client left (or the server gave up): count unfinished choices as aborted."""
        for c in self.choices:
            if c.finish_reason is None:
                c.finish_reason = "abort"
                self.metrics.finished("abort")

    def usage(self) -> UsageCounter:
        return UsageCounter(
            prompt_tokens=sum(self.prompt_lens),
            cached_tokens=sum(self.cached),
            completion_tokens=sum(len(c.token_ids) for c in self.choices),
            reasoning_tokens=sum(c.reasoning_tokens for c in self.choices),
        )
