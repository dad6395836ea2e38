"""Anthropic Messages -> the chat path: system and content blocks to chat
messages (thinking -> reasoning_content, tool_use -> tool_calls, tool_result
-> tool messages), thinking -> the reasoning budget, tools and tool_choice to
the chat fields of the same meaning (implemented there, or a 400 naming them:
one rule for every dialect). A last assistant message is continued, as
Anthropic continues a prefill (DeepSeek's prefix completion on the chat path)."""
from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from jevons.server.dialects.anthropic.schema import CountTokensRequest, MessagesRequest
from jevons.server.errors import APIError
from jevons.server.protocol import ChatCompletionRequest


def _bad(where: str, message: str) -> APIError:
    return APIError(400, f"{where}: {message}", param=where)


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _bad(where, "content must be a string or a list of content blocks")
    for j, b in enumerate(content):
        if not isinstance(b, dict) or not isinstance(b.get("type"), str):
            raise _bad(f"{where}[{j}]", "a content block must be an object with a type")
    return content


def _text(block: dict[str, Any], where: str) -> str:
    if not isinstance(block.get("text"), str):
        raise _bad(where, "a text block needs a string text")
    return block["text"]


def system_text(system: str | list[dict[str, Any]] | None) -> str | None:
    """The system prompt; text blocks are joined (cache_control marks are moot:
    jevons caches every prefix)."""
    if system is None or isinstance(system, str):
        return system
    texts = []
    for j, b in enumerate(system):
        if b.get("type") != "text":
            raise _bad(f"system[{j}].type", f"system blocks must be text, got {b.get('type')!r}")
        texts.append(_text(b, f"system[{j}]"))
    return "\n".join(texts)


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(block.get("tool_use_id"), str):
        raise _bad(f"{where}.tool_use_id", "a tool_result block needs a string tool_use_id")
    content = block.get("content", "")
    texts = []
    for j, b in enumerate(_blocks(content, f"{where}.content")):
        if b["type"] != "text":
            raise _bad(f"{where}.content[{j}]", f"tool results of type {b['type']!r} are not supported; text only")
        texts.append(_text(b, f"{where}.content[{j}]"))
    text = "".join(texts)
    if block.get("is_error"):  # the chat path has no error flag: the model reads it in the text
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}


def _user(content: Any, where: str) -> list[dict[str, Any]]:
    """Tool results become tool messages (first, as Anthropic orders them); text the user message."""
    out, texts = [], []
    for j, b in enumerate(_blocks(content, where)):
        if b["type"] == "text":
            texts.append(_text(b, f"{where}[{j}]"))
        elif b["type"] == "tool_result":
            out.append(_tool_result(b, f"{where}[{j}]"))
        else:
            raise APIError(400, f"{where}[{j}]: content blocks of type {b['type']!r} are not supported in user "
                                "messages; this model takes text and tool_result blocks", param=f"{where}[{j}].type")
    if texts or not out:
        out.append({"role": "user", "content": "".join(texts)})
    return out


def _assistant(content: Any, where: str) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": ""}
    for j, b in enumerate(_blocks(content, where)):
        at = f"{where}[{j}]"
        if b["type"] == "text":
            msg["content"] += _text(b, at)
        elif b["type"] == "thinking":
            if not isinstance(b.get("thinking"), str):
                raise _bad(at, "a thinking block needs a string thinking")
            msg["reasoning_content"] = msg.get("reasoning_content", "") + b["thinking"]
        elif b["type"] == "tool_use":
            if not isinstance(b.get("id"), str) or not isinstance(b.get("name"), str):
                raise _bad(at, "a tool_use block needs a string id and name")
            if not isinstance(b.get("input"), dict):
                raise _bad(f"{at}.input", "a tool_use block's input must be an object")
            call = {"id": b["id"], "type": "function",
                    "function": {"name": b["name"], "arguments": json.dumps(b["input"], ensure_ascii=False)}}
            msg.setdefault("tool_calls", []).append(call)
        else:
            raise APIError(400, f"{at}: content blocks of type {b['type']!r} are not supported in assistant "
                                "messages (jevons reads text, thinking and tool_use)", param=f"{at}.type")
    return msg


def chat_messages(req: CountTokensRequest) -> list[dict[str, Any]]:
    system = system_text(req.system)
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for i, m in enumerate(req.messages):
        where = f"messages[{i}]"
        role = m.get("role") if isinstance(m, dict) else None
        if role == "user":
            out += _user(m.get("content"), f"{where}.content")
        elif role == "assistant":
            out.append(_assistant(m.get("content"), f"{where}.content"))
        else:
            raise _bad(f"{where}.role", f"must be user or assistant, got {role!r} (the system prompt is `system`)")
    if req.messages[-1].get("role") == "assistant" and not out[-1].get("tool_calls"):
        out[-1]["prefix"] = True  # a prefill: the answer continues it
    return out


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Anthropic tools ({name, description, input_schema}) -> chat function tools."""
    if tools is None:
        return None
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or t.get("type") not in (None, "custom"):
            kind = t.get("type") if isinstance(t, dict) else None
            raise APIError(400, f"tools[{i}]: only custom tools with a name are supported (got type {kind!r})",
                           param=f"tools[{i}]")
        fn = {"name": t["name"], "parameters": t.get("input_schema") or {"type": "object", "properties": {}}}
        for key in ("description", "strict"):  # strict: Anthropic's structured tool use, the chat path's strict
            if t.get(key) is not None:
                fn[key] = t[key]
        out.append({"type": "function", "function": fn})
    return out


def chat_tool_choice(choice: dict[str, Any] | None) -> tuple[Any, bool | None]:
    """(chat tool_choice, parallel_tool_calls) for Anthropic's tool_choice."""
    if choice is None:
        return None, None
    kind = choice.get("type")
    parallel = None if choice.get("disable_parallel_tool_use") is None else not choice["disable_parallel_tool_use"]
    if kind in ("auto", "none"):
        return kind, parallel
    if kind == "any":
        return "required", parallel
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    raise _bad("tool_choice", 'must be {"type": "auto" | "any" | "none"} or {"type": "tool", "name": ...}')


def reasoning_budget(req: CountTokensRequest, max_tokens: int | None) -> int | None:
    t = req.thinking
    if t is None or t.type == "adaptive":
        return None  # the model's own default, as on the chat route
    if t.type == "disabled":
        return 0
    if t.budget_tokens is None:
        raise _bad("thinking.budget_tokens", "is required when thinking is enabled")
    if max_tokens is not None and t.budget_tokens >= max_tokens:
        raise _bad("thinking.budget_tokens", f"must be less than max_tokens ({t.budget_tokens} >= {max_tokens})")
    return t.budget_tokens


def chat_response_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """output_config.format -> chat's response_format."""
    if fmt is None:
        return None
    if fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt.get("schema"), "strict": True}}
    raise _bad("output_config.format", f"format of type {fmt.get('type')!r} is not supported (json_schema is)")


def to_chat_request(req: CountTokensRequest) -> ChatCompletionRequest:
    """The chat request this Messages (or count_tokens) request means."""
    full = isinstance(req, MessagesRequest)
    max_tokens = req.max_tokens if full else None
    choice, parallel = chat_tool_choice(req.tool_choice)
    body: dict[str, Any] = {
        "model": req.model, "messages": chat_messages(req), "max_tokens": max_tokens,
        "max_reasoning_tokens": reasoning_budget(req, max_tokens),
        "tools": chat_tools(req.tools), "tool_choice": choice, "parallel_tool_calls": parallel,
    }
    if req.output_config is not None:
        body["reasoning_effort"] = req.output_config.effort
        body["response_format"] = chat_response_format(req.output_config.format)
    if full:
        body.update(stop=req.stop_sequences, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                    stream=req.stream, user=req.metadata.user_id if req.metadata else None)
    try:
        return ChatCompletionRequest.model_validate({k: v for k, v in body.items() if v is not None})
    except ValidationError as e:  # the blocks above were checked; this names what slipped through
        first = e.errors()[0]
        raise APIError(400, f"messages: {first.get('msg', 'invalid')}", param="messages") from None
