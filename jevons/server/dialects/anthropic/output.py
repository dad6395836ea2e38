"""The Message object Anthropic's API answers with: content blocks (thinking,
text, tool_use), stop_reason and stop_sequence, usage (input_tokens excludes the part
read from the prefix cache, as Anthropic counts cache_read_input_tokens
apart; jevons's cost rides along as `cost`)."""
from __future__ import annotations

import json
from typing import Any

from jevons.server.choices import ChoiceState
from jevons.server.responses import Usage
from jevons.server.tool_calls.types import ToolCall


def stop_reason(finish_reason: str | None, stop: int | str | None,
                context_cut: bool = False) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence) for a choice's finish. `context_cut`: its
    max_tokens was lowered to what the context holds, so a length finish is the
    context's end (Anthropic's model_context_window_exceeded), not max_tokens."""
    if finish_reason == "length":
        return ("model_context_window_exceeded" if context_cut else "max_tokens"), None
    if finish_reason == "tool_calls":
        return "tool_use", None
    if finish_reason == "stop" and isinstance(stop, str):
        return "stop_sequence", stop  # a matched stop string (a stop token id is the end of a turn)
    if finish_reason == "stop":
        return "end_turn", None
    return None, None


def usage_object(u: Usage, output_tokens: int | None = None) -> dict[str, Any]:
    """Anthropic's usage; `output_tokens` given: a stream's opening count (no cost yet)."""
    cached = u.prompt_tokens_details.cached_tokens
    out: dict[str, Any] = {
        "input_tokens": u.prompt_tokens - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": u.completion_tokens if output_tokens is None else output_tokens,
    }
    cost = u.model_dump().get("cost")
    if cost is not None and output_tokens is None:
        out["cost"] = cost
    return out


def thinking_block(text: str) -> dict[str, Any]:
    # jevons signs nothing; the field is there because Anthropic's clients expect it.
    return {"type": "thinking", "thinking": text, "signature": ""}


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's JSON arguments as the object Anthropic's `input` is (the parsers
    hand over valid JSON; anything else is kept whole rather than lost)."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


def tool_use_block(call: ToolCall, whole: bool = True) -> dict[str, Any]:
    """A parsed call as a tool_use block (a stream starts it with an empty input)."""
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input(call.arguments) if whole else {}}


def content_blocks(c: ChoiceState) -> list[dict[str, Any]]:
    """A finished choice's blocks: its thinking (when the server splits <think>),
    its text, then its tool calls."""
    out = []
    if c.reasoning:
        out.append(thinking_block(c.reasoning))
    if c.content:
        out.append(text_block(c.content))
    out += [tool_use_block(call) for call in c.tool_calls]
    return out


def message_object(msg_id: str, model: str, content: list[dict[str, Any]], stop: tuple[str | None, str | None],
                   usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop[0], "stop_sequence": stop[1], "usage": usage}
