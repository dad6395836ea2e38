"""Response bodies. Non-streaming responses are built with these models (so
the OpenAPI schema documents exactly what is sent); stream chunks are plain
dicts of the same shapes, built in sse.py / the routes for speed."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class UsageCost(BaseModel):
    """What the request is billed, by component (docs/cost.md); present only when
    the server has a price for the model. Reasoning tokens are billed as output."""

    currency: str
    input_cache_hit: float
    input_cache_miss: float
    output: float
    total: float
    window: str | None = None  # the price window in force (e.g. "off-peak"), if any


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails
    # DeepSeek's names for the prefix-cache split of prompt_tokens.
    prompt_cache_hit_tokens: int
    prompt_cache_miss_tokens: int
    cost: UsageCost | None = None

    @model_serializer(mode="wrap")
    def _omit_absent_cost(self, handler: SerializerFunctionWrapHandler):
        # Without prices the usage object stays exactly OpenAI's/DeepSeek's shape;
        # likewise no "window": null outside any price window. (No return type on
        # purpose: with one, pydantic documents the model as a bare dict.)
        out = handler(self)
        if out.get("cost") is None:
            out.pop("cost", None)
        elif out["cost"].get("window") is None:
            out["cost"].pop("window", None)
        return out


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[Any] = []


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None
    stop_reason: int | str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None
    stop_reason: int | str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "jevons"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str | None] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


class HealthResponse(BaseModel):
    status: Literal["ok", "loading", "draining", "error"]
    detail: str | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
