"""Tool-call parsers by name (`--tool-call-parser`), and the one a chat
template implies when none is named."""
from __future__ import annotations

from collections.abc import Callable

from jevons.server.tool_calls.base import ToolParser
from jevons.server.tool_calls.deepseek import CALLS_BEGIN, DeepSeekParser
from jevons.server.tool_calls.deepseek_dsml import DSML, DeepSeekDSMLParser
from jevons.server.tool_calls.hermes import HermesParser
from jevons.server.tool_calls.llama3_json import PYTHON_TAG, Llama3JsonParser

PARSERS: dict[str, Callable[[], ToolParser]] = {
    "hermes": HermesParser,  # also Qwen2.5/Qwen3, and the generic format (tool_calls/prompt.py)
    "qwen2": HermesParser,
    "deepseek_v3": DeepSeekParser,  # V3, R1 and V3.1 (one parser reads both)
    "deepseek_v31": DeepSeekParser,
    "deepseek_v32": DeepSeekDSMLParser,  # V3.2's DSML invoke/parameter format
    "llama3_json": Llama3JsonParser,
}


def parser_name_for(template: str | None) -> str:
    """The format the model's chat template writes tool calls in."""
    t = template or ""
    if DSML in t:
        return "deepseek_v32"
    if CALLS_BEGIN in t:
        return "deepseek_v3"
    if "<tool_call>" in t:
        return "hermes"
    if PYTHON_TAG in t or ("ipython" in t and '"parameters"' in t):
        return "llama3_json"
    return "hermes"  # templates without tool support get the generic Hermes-style prompt
