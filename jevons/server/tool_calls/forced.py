"""tool_choice "required" or a named function, enforced by grammar.

The output is not the model's own call format but plain JSON that a grammar
can hold to the declared schemas (as vLLM does): for a named function, its
arguments object; for "required", a list of `{"name", "parameters"}` objects,
one per call (at most one without parallel_tool_calls). Whatever the
weights, the answer parses into calls to listed functions whose arguments
validate."""
from __future__ import annotations

import json
from typing import Any

from jevons.sampling_params import StructuredOutputsParams
from jevons.server.tool_calls.base import call_from_obj
from jevons.server.tool_calls.types import FunctionTool, ToolCall, ToolChoice


def forced_schema(tools: list[FunctionTool], choice: ToolChoice) -> dict[str, Any]:
    if choice.mode == "named":
        return next(t.parameters for t in tools if t.name == choice.name)
    items = [{"type": "object", "properties": {"name": {"const": t.name}, "parameters": t.parameters},
              "required": ["name", "parameters"], "additionalProperties": False} for t in tools]
    schema: dict[str, Any] = {"type": "array", "items": {"anyOf": items}, "minItems": 1}
    if not choice.parallel:
        schema["maxItems"] = 1
    return schema


def forced_spec(tools: list[FunctionTool], choice: ToolChoice) -> StructuredOutputsParams:
    return StructuredOutputsParams(json=forced_schema(tools, choice), param="tools")


class ForcedParser:
    """Reads the grammar's JSON at the end of the answer into calls."""

    def __init__(self, choice: ToolChoice) -> None:
        self.choice = choice
        self._buf = ""

    def feed(self, text: str, final: bool) -> tuple[str, list[ToolCall]]:
        self._buf += text
        if not final:
            return "", []
        text, self._buf = self._buf, ""
        try:
            obj = json.loads(text)
        except ValueError:  # cut short (max_tokens): what there is stays content
            return text, []
        if self.choice.mode == "named":
            if not isinstance(obj, dict):
                return text, []
            return "", [ToolCall(self.choice.name or "", json.dumps(obj, ensure_ascii=False))]
        calls = [call_from_obj(o, ("parameters",)) for o in obj] if isinstance(obj, list) else [None]
        if not calls or any(c is None for c in calls):
            return text, []
        return "", calls  # type: ignore[return-value]
