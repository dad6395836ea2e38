"""Functions with `strict: true` under tool_choice "auto": the model still
chooses whether to call, but once it starts a call (the format's trigger)
the grammar holds it to the model's own call format, a listed function and
arguments valid against that function's schema: an xgrammar structural tag,
one tag per function."""
from __future__ import annotations

import json

from jevons.sampling_params import StructuredOutputsParams
from jevons.server.tool_calls.types import FunctionTool

# parser -> (trigger, begin with {name}, end): how each format spells one call
# around its arguments object.
FORMATS: dict[str, tuple[str, str, str]] = {
    "hermes": ("<tool_call>", '<tool_call>\n{{"name": "{name}", "arguments": ', "}\n</tool_call>"),
    "deepseek_v3": ("<｜tool▁call▁begin｜>", "<｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n",
                    "\n```<｜tool▁call▁end｜>"),
    "llama3_json": ('{"name": ', '{{"name": "{name}", "parameters": ', "}"),
}
FORMATS["qwen2"] = FORMATS["hermes"]
FORMATS["deepseek_v31"] = FORMATS["deepseek_v3"]


def strict_spec(tools: list[FunctionTool], parser_name: str, parallel: bool) -> StructuredOutputsParams | None:
    """The structural tag when any function is strict (every listed function
    gets a tag: a call must name one of them); None otherwise."""
    if not any(t.strict for t in tools) or parser_name not in FORMATS:
        return None
    trigger, begin, end = FORMATS[parser_name]
    tags = [{"type": "tag", "begin": begin.format(name=t.name),
             "content": {"type": "json_schema", "json_schema": t.parameters}, "end": end} for t in tools]
    tag = {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": [trigger], "tags": tags,
                                                "at_least_one": False, "stop_after_first": not parallel}}
    return StructuredOutputsParams(structural_tag=json.dumps(tag), param="tools")
