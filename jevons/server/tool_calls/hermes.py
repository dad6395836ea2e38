"""Hermes / Qwen2.5 / Qwen3 tool calls: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`,
one block per call. Also the generic format jevons asks for when a model's
template has no tool support (tool_calls/prompt.py)."""
from __future__ import annotations

from jevons.server.tool_calls.base import TaggedParser, json_call
from jevons.server.tool_calls.types import ToolCall


class HermesParser(TaggedParser):
    start = "<tool_call>"
    end = "</tool_call>"

    def parse_call(self, body: str) -> list[ToolCall] | None:
        call = json_call(body)
        return None if call is None else [call]
