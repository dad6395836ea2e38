"""Chat messages -> the prompt string, through the model's chat template.

DeepSeek prefix completion: when the last message is an assistant message
with "prefix": true, the model continues that text instead of starting a new
turn. We render the conversation including that message without a generation
prompt and cut right after its content (what vLLM's continue_final_message
does); templates that rewrite assistant content (or a prefix that carries
reasoning_content) fall back to the generation prompt plus the prefix."""
from __future__ import annotations

import inspect
import keyword
import logging
from typing import Any

import jinja2

from jevons.loader.chat_template import render_chat_template
from jevons.loader.tokenizer import Tokenizer
from jevons.server.errors import APIError
from jevons.server.protocol import ChatMessage
from jevons.engine.reasoning import THINK_END, THINK_START, prompt_ends_in_think
from jevons.server.tool_calls.prompt import prepare as prepare_tools

log = logging.getLogger("jevons.server")


def _parameters(*fns) -> set[str]:
    return {name for fn in fns for name, p in inspect.signature(fn).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


# Names a request may not set through chat_template_kwargs: the arguments the
# renderer itself takes (a clash would be a TypeError deep in the call: `self`,
# `source`, `messages`, ...), the template itself, and what the renderer fills in.
RESERVED_TEMPLATE_KWARGS = frozenset(
    _parameters(Tokenizer.apply_chat_template, render_chat_template)
    | {"self", "chat_template", "special_tokens", "messages", "tools", "add_generation_prompt", "conversation",
       "tokenize", "continue_final_message", "return_dict"}
)


def check_template_kwargs(template_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """A request may set template variables (enable_thinking, ...): names that
    are identifiers, never the template itself nor the renderer's own arguments."""
    out = {}
    for k, v in (template_kwargs or {}).items():
        if not isinstance(k, str) or not k.isidentifier() or keyword.iskeyword(k) or k.startswith("__"):
            raise APIError(400, f"chat_template_kwargs key {k!r} is not a valid template variable name "
                                "(letters, digits and _, not starting with a digit)", param="chat_template_kwargs")
        if k in RESERVED_TEMPLATE_KWARGS:
            raise APIError(400, f"chat_template_kwargs may not set {k!r}: the server fills it in "
                                f"(reserved: {', '.join(sorted(RESERVED_TEMPLATE_KWARGS))})",
                           param="chat_template_kwargs")
        out[k] = v
    return out


def _flatten_content(msg: ChatMessage, i: int) -> str | None:
    if msg.content is None or isinstance(msg.content, str):
        return msg.content
    texts = []
    for j, part in enumerate(msg.content):
        if part.type != "text" or part.text is None:
            raise APIError(
                400, f"content part of type {part.type!r} is not supported; this model takes text parts only",
                param=f"messages[{i}].content[{j}]",
            )
        texts.append(part.text)
    return "".join(texts)


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Plain dicts for the template: text content, extra keys (tool_calls, name,
    tool_call_id) kept, our own `prefix` flag dropped."""
    out = []
    for i, m in enumerate(messages):
        d = m.model_dump(exclude_none=True, exclude={"prefix"})
        d["content"] = _flatten_content(m, i) or ""
        out.append(d)
    return out


def _render(tokenizer, msgs: list[dict[str, Any]], add_generation_prompt: bool, tools, kwargs: dict[str, Any]) -> str:
    try:
        return tokenizer.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt, tools=tools, **kwargs)
    except jinja2.TemplateError as e:
        raise APIError(400, f"the chat template rejected these messages: {e}", param="messages") from None
    except ValueError as e:  # e.g. the model has no chat template
        raise APIError(400, str(e), param="messages") from None
    except (TypeError, AttributeError, KeyError, IndexError, ArithmeticError, RecursionError) as e:
        # The template met values it cannot handle (a tool call that is a string, a number where it
        # wants text): what the request sent, so a 400, not a server error.
        log.info("chat template failed on a request: %r", e)
        raise APIError(400, f"the chat template could not render these messages ({type(e).__name__}: {e})",
                       param="messages") from None


def render_chat_prompt(
    tokenizer,
    messages: list[ChatMessage],
    tools: list[dict[str, Any]] | None = None,
    template_kwargs: dict[str, Any] | None = None,
    add_generation_prompt: bool = True,
) -> str:
    kwargs = check_template_kwargs(template_kwargs)
    for i, m in enumerate(messages[:-1]):
        if m.prefix:
            raise APIError(400, "only the last message may have prefix set", param=f"messages[{i}].prefix")
    last = messages[-1]
    # Tools, tool calls and tool results as this template reads them (tool_calls/prompt.py).
    msgs, tools = prepare_tools(message_dicts(messages), tools, getattr(tokenizer, "chat_template", None))
    if not last.prefix:
        return _render(tokenizer, msgs, add_generation_prompt, tools, kwargs)
    if last.role != "assistant":
        raise APIError(400, "prefix completion needs the last message to be from the assistant",
                       param=f"messages[{len(messages) - 1}].prefix")
    content = msgs[-1]["content"]
    reasoning = last.reasoning_content
    if content and not reasoning:
        rendered = _render(tokenizer, msgs, False, tools, kwargs)
        cut = rendered.rfind(content)
        if cut >= 0:
            return rendered[: cut + len(content)]
    head = _render(tokenizer, msgs[:-1], True, tools, kwargs)
    if reasoning:
        if not prompt_ends_in_think(head):
            head += THINK_START + "\n"
        head += reasoning
        if content:
            head += f"\n{THINK_END}\n\n" + content
        return head
    return head + content
