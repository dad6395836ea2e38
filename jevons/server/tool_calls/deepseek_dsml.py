"""DeepSeek V3.2 tool calls (DSML):

    <｜DSML｜function_calls>
    <｜DSML｜invoke name="get_weather">
    <｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>
    <｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>
    </｜DSML｜invoke>
    </｜DSML｜function_calls>

A parameter with string="true" is the text itself; otherwise its text is a
JSON value. An invoke whose body is one JSON object (no parameter tags) is
read as the arguments."""
from __future__ import annotations

import json
import re

from jevons.server.tool_calls.base import TaggedParser
from jevons.server.tool_calls.types import ToolCall

DSML = "｜DSML｜"
CALLS_BEGIN, CALLS_END = f"<{DSML}function_calls>", f"</{DSML}function_calls>"
_HEAD = re.compile(r'^\s*name="([^"]+)"\s*>(.*)$', re.S)
_PARAM = re.compile(rf'<{DSML}parameter\s+name="([^"]+)"(?:\s+string="(true|false)")?\s*>(.*?)</{DSML}parameter>', re.S)


class DeepSeekDSMLParser(TaggedParser):
    start = f"<{DSML}invoke"
    end = f"</{DSML}invoke>"
    drop = (CALLS_BEGIN, CALLS_END)

    def parse_call(self, body: str) -> list[ToolCall] | None:
        m = _HEAD.match(body)
        if m is None:
            return None
        name, rest = m.group(1), m.group(2).strip()
        params = _PARAM.findall(rest)
        if params:
            args = {}
            for key, is_string, text in params:
                if is_string == "true":
                    args[key] = text
                    continue
                try:
                    args[key] = json.loads(text)
                except ValueError:
                    args[key] = text  # a bare word the model did not quote
        else:
            try:
                args = json.loads(rest or "{}")
            except ValueError:
                return None
            if not isinstance(args, dict):
                return None
        return [ToolCall(name, json.dumps(args, ensure_ascii=False))]
