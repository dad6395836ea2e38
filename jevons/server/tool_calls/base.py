"""What every tool-call parser does: read the model's text as it streams,
pass through what is plain content, and return each call once it is complete.
A marker that may be starting (`<tool_ca`) is held back, never sent as
content; text that looked like a call but does not parse is content after all.

`TaggedParser` covers the formats that wrap each call in a start and an end
marker (Hermes/Qwen2 `<tool_call>...</tool_call>`, DeepSeek's
`<｜tool▁call▁begin｜>...<｜tool▁call▁end｜>`); a format only says how one
call's body reads (`parse_call`) and which other markers to drop."""
from __future__ import annotations

import json
from typing import Any, Protocol

from jevons.server.tool_calls.types import ToolCall


class ToolParser(Protocol):
    def feed(self, text: str, final: bool) -> tuple[str, list[ToolCall]]:
        """(content to send now, calls completed by this text)."""
        ...


def held_back(buf: str, markers: tuple[str, ...]) -> int:
    """How many characters at the end of `buf` could be the start of a marker."""
    best = 0
    for m in markers:
        for k in range(min(len(m) - 1, len(buf)), best, -1):
            if buf.endswith(m[:k]):
                best = k
                break
    return best


def json_call(body: str, args_keys: tuple[str, ...] = ("arguments", "parameters")) -> ToolCall | None:
    """`{"name": ..., "arguments": {...}}` (or "parameters") -> a call; None if it is not one."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    return call_from_obj(obj, args_keys)


def call_from_obj(obj: Any, args_keys: tuple[str, ...] = ("arguments", "parameters")) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = next((obj[k] for k in args_keys if k in obj), {})
    if isinstance(args, str):  # some models write the arguments as JSON text already
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


class TaggedParser:
    start: str = ""
    end: str = ""
    drop: tuple[str, ...] = ()  # markers around the calls, removed from the content

    def __init__(self) -> None:
        self._buf = ""
        self._in_call = False
        self._seen_call = False  # after the first call, whitespace between calls is not content
        self._ws = ""  # whitespace held back after a call, in case text follows
        self.num_calls = 0

    def parse_call(self, body: str) -> list[ToolCall] | None:
        raise NotImplementedError

    def feed(self, text: str, final: bool) -> tuple[str, list[ToolCall]]:
        self._buf += text
        out: list[str] = []
        calls: list[ToolCall] = []

        def emit(piece: str) -> None:
            for m in self.drop:
                piece = piece.replace(m, "")
            if not self._seen_call:
                out.append(piece)
            elif piece.strip():
                out.append(self._ws + piece)
                self._ws = ""
            else:
                self._ws += piece

        while True:
            if self._in_call:
                j = self._buf.find(self.end)
                if j < 0 and not final:
                    break
                body = self._buf if j < 0 else self._buf[:j]
                self._buf = "" if j < 0 else self._buf[j + len(self.end):]
                self._in_call = False
                parsed = self.parse_call(body.strip())
                if parsed is None:  # not a call after all: the text stays content
                    emit(self.start + body + ("" if j < 0 else self.end))
                else:
                    calls.extend(parsed)
                continue
            i = self._buf.find(self.start)
            if i >= 0:
                emit(self._buf[:i])
                self._buf = self._buf[i + len(self.start):]
                self._in_call = self._seen_call = True
                continue
            keep = 0 if final else held_back(self._buf, (self.start, *self.drop))
            emit(self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep:]
            break
        if final:
            self._ws = ""
        content = "".join(out)
        self.num_calls += len(calls)
        return content, calls
