"""The request body of POST /v1/responses, as OpenAI defines it.

Fields jevons implements are declared; fields OpenAI defines that would
change the output and that jevons cannot honour are the table `UNSUPPORTED`
(checked by sampling.check_fields, as the chat route checks its own table):
a value that asks for nothing passes, any other is a 400 naming the field.
Bookkeeping fields (service_tier, prompt_cache_key, safety_identifier, ...)
are the chat route's `protocol.IGNORED`. Input items are validated where they
are translated (convert.py), so an error names `input[i]...` exactly."""
from __future__ import annotations

from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from jevons.server.protocol import Bool, Int, Num, _ValidUnicode

# reasoning.effort takes the chat route's names (sampling.REASONING_EFFORT).
# Summaries: jevons returns the reasoning itself (reasoning_text), never a summary
# of it; "auto" (the server picks) passes, asking for one kind of summary does not.
SUMMARY_OK = (None, "auto")
LOGPROBS_INCLUDE = "message.output_text.logprobs"
ENCRYPTED_INCLUDE = "reasoning.encrypted_content"  # reasoning_blob.py


class _Strict(_ValidUnicode):
    model_config = ConfigDict(extra="forbid")


class ReasoningConfig(_Strict):
    effort: str | None = None
    summary: str | None = None


class TextConfig(_Strict):
    format: dict[str, Any] | None = None  # {"type": "text" | "json_schema" | "json_object", ...}
    verbosity: str | None = None


class ResponsesRequest(_ValidUnicode):
    model_config = ConfigDict(extra="allow")  # named in a 400 by sampling.check_fields

    model: str | None = None
    input: str | list[dict[str, Any]] = Field(
        description="A string (one user message) or a list of input items: messages, reasoning, "
                    "function_call and function_call_output items")
    instructions: str | None = None
    max_output_tokens: Int | None = None
    temperature: Num | None = None
    top_p: Num | None = None
    top_logprobs: Int | None = None
    include: list[str] | None = None
    reasoning: ReasoningConfig | None = None
    text: TextConfig | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: Bool | None = None
    stream: Bool = False
    store: Bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    truncation: Literal["disabled", "auto"] | None = None


def _no_obfuscation(v: Any, _: dict[str, Any]) -> bool:
    # OpenAI pads stream deltas with an "obfuscation" field when asked; jevons never does.
    return v is None or (isinstance(v, dict) and set(v) <= {"include_obfuscation"} and not v.get("include_obfuscation"))


# OpenAI Responses fields jevons does not implement: field -> whether a value
# asks for nothing. Implementing one means deleting its line.
UNSUPPORTED: dict[str, Callable[[Any, dict[str, Any]], bool]] = {
    "background": lambda v, req: v in (None, False),
    "conversation": lambda v, req: v is None,
    "prompt": lambda v, req: v is None,
    "max_tool_calls": lambda v, req: v is None,
    "context_management": lambda v, req: v is None,
    "moderation": lambda v, req: v is None,
    "stream_options": _no_obfuscation,
    "truncation": lambda v, req: v in (None, "disabled"),
    "include": lambda v, req: not v or set(v) <= {LOGPROBS_INCLUDE, ENCRYPTED_INCLUDE},
}


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True
