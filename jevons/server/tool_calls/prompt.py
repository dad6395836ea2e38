"""Tools and tool messages into a chat template.

A template that reads `tools` (Llama 3.1+, Qwen2.5, DeepSeek V3/R1, Hermes)
gets them as OpenAI's `tools` list and the conversation's tool calls and
results as they are; arguments are handed over as an object where the
template writes them with `tojson` (Qwen, Llama), as the JSON string
otherwise (DeepSeek writes the string inside its json fence).

A template that does not read `tools` gets them in a system message that
lists the functions as JSON inside <tools></tools> and shows the call format
(merged in front of the conversation's own system message, if any): the
DeepSeek format where the template writes DeepSeek tool calls (DeepSeek V3's
own template reads no `tools`), else Hermes-style
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`. A template that
writes no `tool_calls` at all (SmolLM2, the test models) also gets the
conversation's tool turns rewritten (documented in docs/server.md):
- an assistant message's tool_calls as those blocks after its text;
- a `tool` message as a user turn holding `<tool_response>...</tool_response>`."""
from __future__ import annotations

import json
import re
from typing import Any

from jevons.server.errors import APIError

_TOJSON_ARGS = re.compile(r"arguments['\"]?\]?\s*\|\s*tojson")

GENERIC_INSTRUCTIONS = (
    "You may call one or more functions to assist with the user query. The functions are listed as JSON "
    "within <tools></tools>:\n<tools>\n{tools}\n</tools>\n\n"
)
HERMES_FORMAT = ("To call a function, answer with one JSON object per call, each within <tool_call></tool_call>:\n"
                 '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
DEEPSEEK_FORMAT = ("To call functions, answer with:\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
                   "<function-name>\n```json\n<args-json-object>\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>")


def template_reads_tools(template: str | None) -> bool:
    return bool(template) and re.search(r"\btools\b", template) is not None  # type: ignore[arg-type]


def prepare(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
            template: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools) as the template should get them; a 400 naming the
    place for a tool call that is not OpenAI's shape."""
    check_tool_turns(messages)
    has_tool_turns = any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)
    if not tools and not has_tool_turns:
        return messages, tools
    t = template or ""
    if "tool_calls" in t:  # the template writes tool calls and results itself (DeepSeek's reads no `tools`)
        as_object = bool(_TOJSON_ARGS.search(t))
        messages = [_arguments(m, as_object) for m in messages]
    else:
        messages = _generic_turns(messages)
    if template_reads_tools(t) or not tools:
        return messages, tools
    return _with_system(messages, tools, DEEPSEEK_FORMAT if "<｜tool▁call▁begin｜>" in t else HERMES_FORMAT), None


def check_tool_turns(messages: list[dict[str, Any]]) -> None:
    for i, m in enumerate(messages):
        calls = m.get("tool_calls")
        if calls is None:
            continue
        if not isinstance(calls, list):
            raise APIError(400, "tool_calls must be a list", param=f"messages[{i}].tool_calls")
        for j, c in enumerate(calls):
            where = f"messages[{i}].tool_calls[{j}]"
            fn = c.get("function") if isinstance(c, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise APIError(400, f'{where} must be {{"id", "type": "function", "function": {{"name", "arguments"}}}}',
                               param=f"{where}.function")
            if not isinstance(fn.get("arguments", ""), (str, dict)):
                raise APIError(400, f"{where}.function.arguments must be a JSON string",
                               param=f"{where}.function.arguments")


def _arguments(m: dict[str, Any], as_object: bool) -> dict[str, Any]:
    if not m.get("tool_calls"):
        return m
    calls = []
    for c in m["tool_calls"]:
        fn = dict(c.get("function") or {}) if isinstance(c, dict) else {}
        args = fn.get("arguments")
        if as_object and isinstance(args, str):
            try:
                fn["arguments"] = json.loads(args)
            except ValueError:
                pass  # left as the text the client sent
        calls.append({**c, "function": fn} if isinstance(c, dict) else c)
    return {**m, "tool_calls": calls}


def _generic_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"})
        elif role == "assistant" and m.get("tool_calls"):
            blocks = []
            for c in m["tool_calls"]:
                fn = (c.get("function") or {}) if isinstance(c, dict) else {}
                args = fn.get("arguments")
                try:
                    args = json.loads(args) if isinstance(args, str) else args
                except ValueError:
                    pass
                blocks.append("<tool_call>\n" + json.dumps({"name": fn.get("name"), "arguments": args},
                                                           ensure_ascii=False) + "\n</tool_call>")
            text = "\n".join(([m["content"]] if m.get("content") else []) + blocks)
            out.append({**{k: v for k, v in m.items() if k != "tool_calls"}, "content": text})
        else:
            out.append(m)
    return out


def _with_system(messages: list[dict[str, Any]], tools: list[dict[str, Any]], how: str) -> list[dict[str, Any]]:
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    system = GENERIC_INSTRUCTIONS.format(tools=listing) + how
    out = list(messages)
    if out and out[0].get("role") in ("system", "developer"):
        out[0] = {**out[0], "content": f"{out[0].get('content') or ''}\n\n{system}".lstrip()}
    else:
        out.insert(0, {"role": "system", "content": system})
    return out
