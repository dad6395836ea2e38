"""DeepSeek tool calls, V3/R1 and V3.1:

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
    ```json
    {ARGS}
    ```<｜tool▁call▁end｜><｜tool▁calls▁end｜>                       (V3, R1)

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{ARGS}<｜tool▁call▁end｜><｜tool▁calls▁end｜>   (V3.1)

One parser reads both: what precedes the separator says which it is."""
from __future__ import annotations

import json
import re

from jevons.server.tool_calls.base import TaggedParser
from jevons.server.tool_calls.types import ToolCall

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.S)


class DeepSeekParser(TaggedParser):
    start = CALL_BEGIN
    end = CALL_END
    drop = (CALLS_BEGIN, CALLS_END)

    def parse_call(self, body: str) -> list[ToolCall] | None:
        head, sep, rest = body.partition(SEP)
        if not sep:
            return None
        if head.strip() == "function":  # V3/R1: the name on its own line, then a json fence
            name, _, args = rest.partition("\n")
            m = _FENCE.match(args.strip())
            args = m.group(1) if m else args
        else:  # V3.1
            name, args = head, rest
        name = name.strip()
        try:
            obj = json.loads(args.strip() or "{}")
        except ValueError:
            return None
        if not name or not isinstance(obj, dict):
            return None
        return [ToolCall(name, json.dumps(obj, ensure_ascii=False))]
