"""The Response object: its output items (reasoning, message), status, usage
with jevons's cost. The same builders serve the JSON answer, the stream's
lifecycle events and the stored copy, so all three agree to the byte."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from jevons.server.choices import ChoiceState
from jevons.server.dialects.openai_responses.reasoning_blob import seal
from jevons.server.dialects.openai_responses.schema import ENCRYPTED_INCLUDE, ResponsesRequest
from jevons.server.logprobs import chat_logprobs
from jevons.server.responses import Usage
from jevons.server.tool_calls.types import ToolCall


def new_id(prefix: str) -> str:
    """OpenAI's id style for this API: prefix, underscore, hex (resp_..., msg_..., rs_...)."""
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class ResponseHead:
    """What every snapshot of one response repeats, and its items' ids (fixed
    when the response starts, so stream events and the final object agree)."""

    id: str
    created_at: int
    model: str
    req: ResponsesRequest
    reasoning_id: str = field(default_factory=lambda: new_id("rs"))
    message_id: str = field(default_factory=lambda: new_id("msg"))


def usage_object(u: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.prompt_tokens_details.cached_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.completion_tokens_details.reasoning_tokens},
        "total_tokens": u.total_tokens,
    }
    cost = u.model_dump().get("cost")
    if cost is not None:  # jevons's extension, as in chat usage (docs/cost.md)
        out["cost"] = cost
    return out


def status_of(finish_reason: str | None) -> tuple[str, dict[str, Any] | None]:
    """(status, incomplete_details) for a choice's finish reason."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    return "completed", None


def reasoning_item(head: ResponseHead, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if text else []
    item = {"type": "reasoning", "id": head.reasoning_id, "summary": [], "content": content, "status": status}
    if ENCRYPTED_INCLUDE in (head.req.include or []) and status != "in_progress":
        item["encrypted_content"] = seal(text)
    return item


def text_part(text: str, logprobs: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def message_item(head: ResponseHead, content: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"type": "message", "id": head.message_id, "status": status, "role": "assistant", "content": content}


def function_call_item(call: ToolCall, arguments: str | None = None, status: str = "completed") -> dict[str, Any]:
    """A parsed tool call as a function_call item; its id is derived from the
    call's id, so every event and the final object name it alike."""
    return {"type": "function_call", "id": "fc_" + call.id.removeprefix("call_"), "call_id": call.id,
            "name": call.name, "arguments": call.arguments if arguments is None else arguments, "status": status}


def output_items(head: ResponseHead, c: ChoiceState, k: int | None) -> list[dict[str, Any]]:
    """A finished choice as output items: its reasoning (if any), its message
    (unless it only called tools), then its function calls."""
    status = "incomplete" if c.finish_reason == "length" else "completed"
    calls = c.tool_calls
    items = []
    if c.reasoning:  # reasoning that an answer follows was complete, whatever cut the answer
        items.append(reasoning_item(head, c.reasoning, "completed" if c.content or calls else status))
    if c.content or not calls:
        lps = chat_logprobs(c.token_ids, c.logprobs, k) if k is not None else None
        items.append(message_item(head, [text_part(c.content, lps)], status))
    items += [function_call_item(call) for call in calls]
    return items


def response_object(head: ResponseHead, status: str, output: list[dict[str, Any]], *,
                    usage: Usage | None = None, incomplete: dict[str, Any] | None = None,
                    error: dict[str, Any] | None = None) -> dict[str, Any]:
    req = head.req
    fmt = (req.text.format if req.text else None) or {"type": "text"}
    return {
        "id": head.id,
        "object": "response",
        "created_at": head.created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": head.model,
        "output": output,
        "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": req.reasoning.effort if req.reasoning else None,
                      "summary": req.reasoning.summary if req.reasoning else None},
        "store": req.store,
        "temperature": req.temperature,
        "text": {"format": fmt},
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "tools": req.tools or [],
        "top_logprobs": req.top_logprobs,
        "top_p": req.top_p,
        "truncation": req.truncation or "disabled",
        "usage": usage_object(usage) if usage is not None else None,
        "user": req.user,
        "metadata": req.metadata or {},
    }
