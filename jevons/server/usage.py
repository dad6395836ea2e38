"""Token accounting for one HTTP request (all its prompts and choices)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jevons.server.responses import CompletionTokensDetails, PromptTokensDetails, Usage, UsageCost


@dataclass
class UsageCounter:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # the part of prompt_tokens served from the prefix cache
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # the part of completion_tokens spent inside <think>

    def to_model(self, cost: dict[str, Any] | None = None) -> Usage:
        """`cost`: Cost.to_usage_dict() when the request is priced."""
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=self.cached_tokens),
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=self.reasoning_tokens),
            prompt_cache_hit_tokens=self.cached_tokens,
            prompt_cache_miss_tokens=self.prompt_tokens - self.cached_tokens,
            cost=UsageCost(**cost) if cost is not None else None,
        )

    def to_dict(self) -> dict:
        return self.to_model().model_dump()
