"""Render a model's Jinja chat template the way Hugging Face transformers does.

Templates come from model files, i.e. from strangers, so they run in Jinja's
immutable sandbox. The environment mirrors transformers' (trim_blocks,
lstrip_blocks, loop controls, `raise_exception`, `strftime_now`, a `tojson`
that keeps non-ASCII text readable) so prompts are byte-identical to what the
model was trained and evaluated with.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
from jinja2.sandbox import ImmutableSandboxedEnvironment


class _GenerationTag(jinja2.ext.Extension):
    """Accept `{% generation %}...{% endgeneration %}` (transformers uses it to
    mark assistant tokens for training masks) and render its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's built-in tojson HTML-escapes `<>&'`, which would change tool schemas
    # inside prompts; plain json.dumps is what templates are written against.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def compile_chat_template(source: str) -> jinja2.Template:
    """Compile once per distinct template; rendering is then cheap per request."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


# Names a message's reasoning arrives under. Templates read different ones
# (DeepSeek/Qwen: reasoning_content, gpt-oss: thinking); like transformers, we
# fill all of them from whichever the caller set.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _alias_reasoning(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def render_chat_template(
    source: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    tools: list[Any] | None = None,
    special_tokens: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> str:
    """Render `messages` (OpenAI-style dicts) to the prompt string. Extra kwargs
    (e.g. `enable_thinking`, `documents`) reach the template as variables."""
    variables: dict[str, Any] = dict(special_tokens or {})
    variables.update(kwargs)
    variables.setdefault("documents", None)
    variables.update(messages=_alias_reasoning(messages), tools=tools, add_generation_prompt=add_generation_prompt)
    return compile_chat_template(source).render(**variables)
