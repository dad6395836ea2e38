"""Chat template rendering against transformers' renderer on templates that use
tools, namespaces, loop controls, reasoning fields and the generation tag."""
from __future__ import annotations

import datetime
from typing import Any

import jinja2
import pytest

from jevons.loader.chat_template import render_chat_template

chat_utils = pytest.importorskip("transformers.utils.chat_template_utils")

# A ChatML template with tool calling, in the style of Qwen2.5's.
TOOLS_TEMPLATE = """
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}You are helpful.{%- endif %}
{{- "\\n\\n# Tools\\n<tools>" }}
{%- for tool in tools %}
{{- "\\n" }}{{- tool | tojson }}
{%- endfor %}
{{- "\\n</tools><|im_end|>\\n" }}
{%- elif messages[0]['role'] == 'system' %}
{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(turns=0) %}
{%- for message in messages %}
  {%- if message.role not in ['system', 'user', 'assistant', 'tool'] %}
    {{- raise_exception('unknown role ' + message.role) }}
  {%- endif %}
  {%- if message.role == 'system' %}{% continue %}{% endif %}
  {%- set ns.turns = ns.turns + 1 %}
  {%- if message.role == 'assistant' and message.tool_calls %}
    {{- '<|im_start|>assistant' }}
    {%- for call in message.tool_calls %}
      {{- '\\n<tool_call>\\n' }}{{- {'name': call.function.name, 'arguments': call.function.arguments} | tojson }}{{- '\\n</tool_call>' }}
    {%- endfor %}
    {{- '<|im_end|>\\n' }}
  {%- elif message.role == 'tool' %}
    {{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
  {%- else %}
    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
  {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
{{- '<!-- turns: ' ~ ns.turns ~ ' -->' if show_turns is defined and show_turns else '' }}
"""

# In the style of DeepSeek-R1's: BOS written by the template, reasoning dropped
# from history, a think tag opened for the reply.
REASONING_TEMPLATE = """{{ bos_token }}{% for m in messages %}
{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}
{% elif m['role'] == 'assistant' %}{% set content = m['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}<｜Assistant｜>{{ content }}<｜end▁of▁sentence｜>
{% endif %}{% endfor %}{% if add_generation_prompt %}<｜Assistant｜><think>
{% endif %}{% if messages[-1].reasoning_content is defined %}[r={{ messages[-1].thinking }}]{% endif %}"""

GENERATION_TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}A: {{ m.content }}{% endgeneration %}"
    "{% else %}U: {{ m.content }}{% endif %}\n{% endfor %}"
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city — «current»",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "e.g. 東京"}}},
        },
    }
]

CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "Be precise."},
    {"role": "user", "content": "Weather in 東京 <today>?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "東京"}}}],
    },
    {"role": "tool", "content": '{"temp": 21, "sky": "晴れ"}'},
    {"role": "assistant", "content": "It is 21°C & sunny."},
    {"role": "user", "content": "Thanks"},
]


def _reference(template: str, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    rendered, _ = chat_utils.render_jinja_template(conversations=[messages], chat_template=template, **kwargs)
    return rendered[0]


@pytest.mark.parametrize("tools", [None, TOOLS])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_tools_template_matches_transformers(tools: Any, add_generation_prompt: bool) -> None:
    ours = render_chat_template(TOOLS_TEMPLATE, CONVERSATION, tools=tools, add_generation_prompt=add_generation_prompt)
    theirs = _reference(TOOLS_TEMPLATE, CONVERSATION, tools=tools, add_generation_prompt=add_generation_prompt)
    assert ours == theirs
    if tools:
        assert "東京" in ours and "«current»" in ours  # tojson keeps non-ASCII as is


def test_extra_kwargs_reach_the_template() -> None:
    ours = render_chat_template(TOOLS_TEMPLATE, CONVERSATION, show_turns=True)
    assert ours == _reference(TOOLS_TEMPLATE, CONVERSATION, add_generation_prompt=True, show_turns=True)
    assert ours.endswith("<!-- turns: 5 -->")


def test_reasoning_template_matches_transformers() -> None:
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6", "reasoning_content": "easy"},
    ]
    special = {"bos_token": "<｜begin▁of▁sentence｜>"}
    for generation in (True, False):
        ours = render_chat_template(
            REASONING_TEMPLATE, messages, add_generation_prompt=generation, special_tokens=special
        )
        assert ours == _reference(REASONING_TEMPLATE, messages, add_generation_prompt=generation, **special)
    assert "add" not in ours and ours.endswith("[r=easy]")


def test_generation_tag_renders_its_body() -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    ours = render_chat_template(GENERATION_TEMPLATE, messages)
    # trim_blocks eats the newline after each block tag, as in transformers.
    assert ours == "U: hiA: yo" == _reference(GENERATION_TEMPLATE, messages)


def test_tojson_options_and_strftime() -> None:
    template = "{{ x | tojson(indent=2, sort_keys=True) }}|{{ strftime_now('%Y') }}"
    out = render_chat_template(template, [], x={"b": "ü", "a": [1, "<&>"]})
    assert out == '{\n  "a": [\n    1,\n    "<&>"\n  ],\n  "b": "ü"\n}|' + str(datetime.datetime.now().year)


def test_raise_exception_and_sandbox() -> None:
    with pytest.raises(jinja2.exceptions.TemplateError, match="unknown role robot"):
        render_chat_template(TOOLS_TEMPLATE, [{"role": "robot", "content": "beep"}])
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat_template("{{ ''.__class__.__mro__ }}", [])
    # Templates may not mutate their inputs (immutable sandbox).
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat_template("{% set _ = messages.append(1) %}", [])


def test_missing_special_tokens_render_empty() -> None:
    assert render_chat_template("[{{ bos_token }}]", [], special_tokens={}) == "[]"
