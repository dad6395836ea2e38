"""Llama 3.1/3.2/3.3 JSON tool calls: the whole answer is one JSON object
`{"name": ..., "parameters": {...}}` (several joined by `;`), optionally
after `<|python_tag|>`. An answer that starts any other way is content; one
that starts with `{` is held until it ends, then parsed (content if it is
not a call)."""
from __future__ import annotations

import json

from jevons.server.tool_calls.base import call_from_obj
from jevons.server.tool_calls.types import ToolCall

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonParser:
    def __init__(self) -> None:
        self._buf = ""
        self._mode: str | None = None  # None: undecided, "content", "json"

    def feed(self, text: str, final: bool) -> tuple[str, list[ToolCall]]:
        if self._mode == "content":
            return text, []
        self._buf += text
        head = self._buf.lstrip()
        if self._mode is None:
            if head.startswith(PYTHON_TAG) or head.startswith("{"):
                self._mode = "json"
            elif head and not PYTHON_TAG.startswith(head):
                self._mode = "content"
                out, self._buf = self._buf, ""
                return out, []
        if not final:
            return "", []
        out, self._buf = self._buf, ""
        calls = _parse(head.removeprefix(PYTHON_TAG).strip()) if self._mode == "json" else None
        return ("", calls) if calls else (out, [])


def _parse(text: str) -> list[ToolCall] | None:
    calls: list[ToolCall] = []
    dec = json.JSONDecoder()
    i = 0
    while i < len(text):
        try:
            obj, end = dec.raw_decode(text, i)
        except ValueError:
            return None
        call = call_from_obj(obj)
        if call is None:
            return None
        calls.append(call)
        i = end
        while i < len(text) and text[i] in " \n\t;":
            i += 1
    return calls or None
