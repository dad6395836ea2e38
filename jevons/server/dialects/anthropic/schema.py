"""The request bodies of POST /v1/messages and /v1/messages/count_tokens, as
Anthropic defines them.

Declared fields are implemented; `UNSUPPORTED` lists Anthropic fields that
would change the answer and that jevons cannot honour (a value asking for
nothing passes, any other is a 400 naming the field); any other undeclared
field is a 400 naming it too (sampling.check_fields, as on the chat route).
Content blocks are validated where they are translated (convert.py), so an
error names `messages[i].content[j]` exactly."""
from __future__ import annotations

from typing import Any, Callable, Literal

from pydantic import ConfigDict, Field

from jevons.server.protocol import Bool, Int, Num, _ValidUnicode


class _Strict(_ValidUnicode):
    model_config = ConfigDict(extra="forbid")


class Thinking(_Strict):
    """enabled: think, at most budget_tokens (the reasoning budget); disabled: do
    not (a budget of 0 closes the think block at once); adaptive: the model decides."""

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Int | None = Field(None, ge=1)


class OutputConfig(_Strict):
    effort: str | None = None  # the chat route's reasoning_effort levels (low, medium, high, xhigh, max)
    format: dict[str, Any] | None = None  # {"type": "json_schema", "schema": {...}}


class Metadata(_Strict):
    user_id: str | None = None


class CountTokensRequest(_ValidUnicode):
    model_config = ConfigDict(extra="allow")  # named in a 400 by sampling.check_fields

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    thinking: Thinking | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    output_config: OutputConfig | None = None
    # Anthropic's automatic-caching mark: jevons caches every prompt prefix anyway.
    cache_control: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: Int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: Num | None = Field(None, ge=0, le=1)  # Anthropic's range
    top_p: Num | None = None
    top_k: Int | None = None
    metadata: Metadata | None = None
    stream: Bool = False


# Anthropic fields jevons does not implement: field -> whether a value asks for nothing.
UNSUPPORTED: dict[str, Callable[[Any, dict[str, Any]], bool]] = {
    "container": lambda v, req: v is None,
    "mcp_servers": lambda v, req: not v,
    "context_management": lambda v, req: v is None,
}
