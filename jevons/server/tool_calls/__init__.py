"""Tool calling: the internal shapes (types.py), the checked request
(plan.py), tools in the chat template (prompt.py), and one parser per model
family's call format (hermes.py, llama3_json.py, deepseek.py; registry.py
picks one), plus the grammar-forced JSON for "required" and named choices
(forced.py)."""
from jevons.server.tool_calls.types import FunctionTool, ToolCall, ToolChoice

__all__ = ["FunctionTool", "ToolCall", "ToolChoice"]
