"""A chat request's tools, tool_choice and parallel_tool_calls, checked
(400s naming the field) into what the route needs: the declared functions,
the choice, the grammar that enforces a forced choice, and a parser per choice."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jevons.sampling_params import StructuredOutputsParams
from jevons.server.errors import APIError
from jevons.server.tool_calls.base import ToolParser
from jevons.server.tool_calls.forced import ForcedParser, forced_spec
from jevons.server.tool_calls.registry import PARSERS, parser_name_for
from jevons.server.tool_calls.strict import strict_spec
from jevons.server.tool_calls.types import NAME, FunctionTool, ToolCall, ToolChoice


def parse_tools(tools: Any) -> list[FunctionTool]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise APIError(400, "tools must be a list of function tools", param="tools")
    out: list[FunctionTool] = []
    for i, t in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            raise APIError(400, f'{where} must be {{"type": "function", "function": {{...}}}}', param=f"{where}.type")
        fn = t["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise APIError(400, f"{where}.function.name must be 1 to 64 letters, digits, _, . or -, got {name!r}",
                           param=f"{where}.function.name")
        if any(o.name == name for o in out):
            raise APIError(400, f"{where}.function.name {name!r} is declared twice", param=f"{where}.function.name")
        desc = fn.get("description")
        if desc is not None and not isinstance(desc, str):
            raise APIError(400, f"{where}.function.description must be a string", param=f"{where}.function.description")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise APIError(400, f"{where}.function.parameters must be a JSON schema object",
                           param=f"{where}.function.parameters")
        strict = fn.get("strict", False)
        if not isinstance(strict, bool):
            raise APIError(400, f"{where}.function.strict must be a boolean", param=f"{where}.function.strict")
        out.append(FunctionTool(name, desc, params, strict))
    return out


def parse_choice(choice: Any, tools: list[FunctionTool], parallel: Any) -> ToolChoice:
    if parallel is not None and not isinstance(parallel, bool):
        raise APIError(400, "parallel_tool_calls must be a boolean", param="parallel_tool_calls")
    par = parallel is not False
    if choice is None:
        return ToolChoice("auto" if tools else "none", parallel=par)
    if choice in ("none", "auto", "required"):
        if choice == "required" and not tools:
            raise APIError(400, 'tool_choice "required" needs tools', param="tool_choice")
        return ToolChoice(choice, parallel=par)
    fn = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise APIError(400, 'tool_choice must be "none", "auto", "required" or '
                            '{"type": "function", "function": {"name": ...}}', param="tool_choice")
    if not any(t.name == name for t in tools):
        raise APIError(400, f"tool_choice names {name!r}, which is not one of the tools", param="tool_choice")
    return ToolChoice("named", name, par)


@dataclass
class ToolPlan:
    tools: list[FunctionTool] = field(default_factory=list)
    choice: ToolChoice = field(default_factory=lambda: ToolChoice("none"))
    parser_name: str = "hermes"

    @property
    def active(self) -> bool:
        """Whether the answer is read for tool calls."""
        return bool(self.tools) and self.choice.mode != "none"

    def spec(self) -> StructuredOutputsParams | None:
        """The grammar of a forced choice, or of strict functions under "auto"."""
        if not self.active:
            return None
        if self.choice.forced:
            return forced_spec(self.tools, self.choice)
        return strict_spec(self.tools, self.parser_name, self.choice.parallel)  # strict functions under "auto"

    def parser(self) -> ToolParser | None:
        if not self.active:
            return None
        if self.choice.forced:
            return ForcedParser(self.choice)
        return _OnlyFirst(PARSERS[self.parser_name]()) if not self.choice.parallel else PARSERS[self.parser_name]()


def tool_plan(body: Any, template: str | None, parser_override: str | None = None) -> ToolPlan:
    tools = parse_tools(getattr(body, "tools", None))
    choice = parse_choice(getattr(body, "tool_choice", None), tools, getattr(body, "parallel_tool_calls", None))
    name = parser_override or parser_name_for(template)
    if name not in PARSERS:  # a ServeConfig built in code, past the CLI's choices
        raise ValueError(f"unknown tool-call parser {name!r} (known: {', '.join(sorted(PARSERS))})")
    return ToolPlan(tools, choice, name)


class _OnlyFirst:
    """parallel_tool_calls false in auto mode: the first call is kept."""

    def __init__(self, inner: ToolParser) -> None:
        self.inner = inner
        self.seen = 0

    def feed(self, text: str, final: bool) -> tuple[str, list[ToolCall]]:
        content, calls = self.inner.feed(text, final)
        calls = calls[: max(0, 1 - self.seen)]
        self.seen += len(calls)
        return content, calls
