"""Responses API <-> the chat path: input items to chat messages, the request
to a `ChatCompletionRequest`, and tools, tool_choice and text.format to the
chat fields of the same meaning (which the chat path implements or refuses
with a 400, one rule for both dialects)."""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from jevons.server.errors import APIError
from jevons.server.protocol import ChatCompletionRequest
from jevons.server.dialects.openai_responses.reasoning_blob import unseal
from jevons.server.dialects.openai_responses.schema import LOGPROBS_INCLUDE, SUMMARY_OK, ResponsesRequest

ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text", "text", "refusal")
# Chat field -> the Responses field a client sent, for errors the chat path raises.
PARAM_NAMES = {
    "max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens", "messages": "input",
    "reasoning_effort": "reasoning.effort", r"response_format(?:\.json_schema)?(\..*)?": r"text.format\1",
    r"tools\[(\d+)\]\.function\.(\w+)": r"tools[\1].\2",
}


def _bad(where: str, message: str) -> APIError:
    return APIError(400, f"{where}: {message}", param=where)


def _text_of(content: Any, where: str) -> str:
    """A message's content (a string or a list of text parts) as text."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(where, "content must be a string or a list of content parts")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(f"{where}[{j}]", "a content part must be an object with a type")
        kind = part["type"]
        if kind not in TEXT_PARTS:
            raise APIError(400, f"{where}[{j}]: content part of type {kind!r} is not supported; "
                                "this model takes text parts only", param=f"{where}[{j}]")
        text = part.get("refusal" if kind == "refusal" else "text")
        if not isinstance(text, str):
            raise _bad(f"{where}[{j}]", f"a {kind} part needs a string {'refusal' if kind == 'refusal' else 'text'}")
        texts.append(text)
    return "".join(texts)


def _reasoning_text(item: dict[str, Any], where: str) -> str:
    blob = item.get("encrypted_content")
    if blob:
        text = unseal(blob) if isinstance(blob, str) else None
        if text is None:
            raise _bad(f"{where}.encrypted_content", "this encrypted_content was not made by this server "
                                                     "(jevons reads only its own); send the reasoning's content")
        return text
    parts = item.get("content") or item.get("summary") or []
    if not isinstance(parts, list):
        raise _bad(f"{where}.content", "must be a list of reasoning_text parts")
    texts = []
    for j, p in enumerate(parts):
        if not isinstance(p, dict) or not isinstance(p.get("text"), str):
            raise _bad(f"{where}.content[{j}]", "a reasoning part needs a string text")
        texts.append(p["text"])
    return "\n".join(texts)


def _assistant(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message output items of one turn attach to: the last one, or a new one."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[-1]
    msg: dict[str, Any] = {"role": "assistant", "content": ""}
    messages.append(msg)
    return msg


def input_messages(items: list[dict[str, Any]], offset: int = 0) -> list[dict[str, Any]]:
    """Responses input items -> chat messages. A turn's reasoning, message and
    function_call items become one assistant message (reasoning_content, content,
    tool_calls), as the chat templates expect them. `offset`: the index of the
    first item in the request's `input` (history items come before it)."""
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i - offset}]" if i >= offset else f"previous_response_id's input[{i}]"
        if not isinstance(item, dict):
            raise _bad(where, "an input item must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ROLES:
                raise _bad(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
            text = _text_of(item.get("content"), f"{where}.content")
            if role == "assistant":
                msg = _assistant(out)
                if msg.get("tool_calls"):  # text after a call starts the next message
                    msg = {"role": "assistant", "content": ""}
                    out.append(msg)
                msg["content"] += text
            else:
                out.append({"role": role, "content": text})
        elif kind == "reasoning":
            msg = _assistant(out)
            msg["reasoning_content"] = (msg.get("reasoning_content") or "") + _reasoning_text(item, where)
        elif kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                if not isinstance(item.get(key), str):
                    raise _bad(f"{where}.{key}", "a function_call item needs a string " + key)
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            _assistant(out).setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise _bad(f"{where}.call_id", "a function_call_output item needs a string call_id")
            out.append({"role": "tool", "tool_call_id": item["call_id"],
                        "content": _text_of(item.get("output"), f"{where}.output")})
        else:
            raise APIError(400, f"{where}: input items of type {kind!r} are not supported; jevons takes message, "
                                "reasoning, function_call and function_call_output items", param=f"{where}.type")
    return out


def input_items(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as a list of items (a string is one user message)."""
    if isinstance(req.input, str):
        return [{"type": "message", "role": "user", "content": req.input}]
    return list(req.input)


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Responses function tools (flat) -> chat tools ({"type": "function", "function": {...}})."""
    if tools is None:
        return None
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") != "function":
            kind = t.get("type") if isinstance(t, dict) else None
            raise APIError(400, f"tools[{i}]: tools of type {kind!r} are not supported; jevons runs function "
                                "tools only", param=f"tools[{i}].type")
        if not isinstance(t.get("name"), str):
            raise _bad(f"tools[{i}].name", "a function tool needs a string name")
        fn = {k: t[k] for k in ("name", "description", "parameters", "strict") if t.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out


def chat_tool_choice(choice: Any) -> Any:
    """"none" / "auto" / "required" pass; {"type": "function", "name": N} becomes chat's named choice."""
    if choice is None or isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad("tool_choice", 'must be "none", "auto", "required" or {"type": "function", "name": ...}')


def chat_response_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """text.format -> chat's response_format (json_schema's fields sit one level down there)."""
    if fmt is None or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_schema":
        for key, kind in (("name", str), ("schema", dict)):  # required here, as OpenAI requires them
            if not isinstance(fmt.get(key), kind):
                raise _bad(f"text.format.{key}", f"a json_schema format needs a{'n object' if kind is dict else ' string'} "
                                                 f"{key}")
        inner = {k: v for k, v in fmt.items() if k != "type"}
        return {"type": "json_schema", "json_schema": inner}
    return fmt  # json_object, or a type the chat path names in its 400


def to_chat_request(req: ResponsesRequest, history: list[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat request this Responses request means; `history` is the items of
    the previous_response_id chain (its inputs and outputs), oldest first."""
    if req.reasoning is not None and req.reasoning.summary not in SUMMARY_OK:
        raise APIError(400, f"reasoning.summary={req.reasoning.summary!r} is not supported: jevons returns the "
                            "reasoning itself as reasoning_text, never a summary (send \"auto\" or leave it out)",
                       param="reasoning.summary", code="unsupported_parameter")
    if req.text is not None and req.text.verbosity not in (None, "medium"):
        raise APIError(400, "text.verbosity is not supported by this server yet", param="text.verbosity",
                       code="unsupported_parameter")
    messages = input_messages([*history, *input_items(req)], offset=len(history))
    if req.instructions is not None:
        messages.insert(0, {"role": "system", "content": req.instructions})
    if not messages:
        raise _bad("input", "needs at least one item")
    logprobs = req.top_logprobs is not None or LOGPROBS_INCLUDE in (req.include or [])
    body: dict[str, Any] = {
        "model": req.model, "messages": messages, "max_tokens": req.max_output_tokens,
        "temperature": req.temperature, "top_p": req.top_p, "stream": req.stream,
        "logprobs": logprobs, "top_logprobs": req.top_logprobs if logprobs else None,
        "reasoning_effort": req.reasoning.effort if req.reasoning else None,
        "tools": chat_tools(req.tools), "tool_choice": chat_tool_choice(req.tool_choice),
        "user": req.user,
    }
    fmt = chat_response_format(req.text.format if req.text else None)
    if fmt is not None:
        body["response_format"] = fmt
    if req.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    try:
        return ChatCompletionRequest.model_validate({k: v for k, v in body.items() if v is not None})
    except ValidationError as e:  # the items above were checked; this names what slipped through
        first = e.errors()[0]
        raise APIError(400, f"input: {first.get('msg', 'invalid')}", param="input") from None
