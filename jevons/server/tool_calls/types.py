"""The internal shape of tools and tool calls, whatever API dialect brought
them (Chat Completions, Responses, Messages): dialects convert into these and
out of them.

- `FunctionTool`: one declared function (OpenAI's `tools[i].function`);
- `ToolChoice`: what the request asks of the model ("none", "auto",
  "required", or one named function), and whether parallel calls are allowed;
- `ToolCall`: one call the model made, arguments as a JSON string (OpenAI's
  `tool_calls[i]`)."""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool = False

    def openai(self) -> dict[str, Any]:
        """As OpenAI's tools[i] (what chat templates read)."""
        fn: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description is not None:
            fn["description"] = self.description
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolChoice:
    mode: str = "auto"  # "none" | "auto" | "required" | "named"
    name: str | None = None  # the function, for "named"
    parallel: bool = True

    @property
    def forced(self) -> bool:
        """Whether the output must be a tool call (grammar-enforced)."""
        return self.mode in ("required", "named")


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text of the arguments object
    id: str = field(default_factory=new_call_id)

    def openai(self, index: int | None = None) -> dict[str, Any]:
        """As OpenAI's message.tool_calls[i]; with `index`, as a stream's delta.tool_calls[i]."""
        out: dict[str, Any] = {"id": self.id, "type": "function",
                               "function": {"name": self.name, "arguments": self.arguments}}
        return out if index is None else {"index": index, **out}
