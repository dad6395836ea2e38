"""Tool calling through the real `openai` client against tiny random models:
with tool_choice "required" or a named function the grammar alone makes every
answer a valid call; streamed calls assembled by the client equal the plain
ones; agent loops (call -> tool result -> answer) through a template without
tool support, a Qwen2-style template and a DeepSeek template on a DeepSeek
model."""
from __future__ import annotations

import json

import jsonschema_rs  # schemathesis brings it (test extra)
import openai
import pytest

from jevons.config import engine_config
from jevons.server.app import build_app
from jevons.server.background import ServerThread
from jevons.server.chat_prompt import render_chat_prompt
from jevons.server.config import ServeConfig
from jevons.server.protocol import ChatMessage
from tiny_models import build_model

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6}, "unit": {"enum": ["c", "f"]}},
           "required": ["city", "unit"], "additionalProperties": False}
ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                        "b": {"type": "integer", "minimum": 0, "maximum": 99}},
       "required": ["a", "b"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": WEATHER, "strict": True}},
         {"type": "function", "function": {"name": "add", "parameters": ADD}}]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
MSGS = [{"role": "user", "content": "What is the weather in Paris?"}]

QWEN_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools\n<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n</tools>"
    "<|im_end|>\n{% endif %}"
    "{% for m in messages %}{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n"
    "</tool_response><|im_end|>\n{% elif m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant\n"
    "{{ m.content }}{% for c in m.tool_calls %}<tool_call>\n{\"name\": \"{{ c.function.name }}\", \"arguments\": "
    "{{ c.function.arguments | tojson }}}\n</tool_call>{% endfor %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DEEPSEEK_TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'user' %}<｜User｜>{{ m.content }}"
    "{% elif m.role == 'assistant' and m.tool_calls %}<｜Assistant｜><｜tool▁calls▁begin｜>"
    "{% for c in m.tool_calls %}<｜tool▁call▁begin｜>{{ c.type }}<｜tool▁sep｜>{{ c.function.name }}\n```json\n"
    "{{ c.function.arguments }}\n```<｜tool▁call▁end｜>{% endfor %}<｜tool▁calls▁end｜><｜end▁of▁sentence｜>"
    "{% elif m.role == 'tool' %}<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{{ m.content }}<｜tool▁output▁end｜>"
    "<｜tool▁outputs▁end｜>{% elif m.role == 'assistant' %}<｜Assistant｜>{{ m.content }}<｜end▁of▁sentence｜>"
    "{% else %}{{ m.content }}{% endif %}{% endfor %}{% if add_generation_prompt %}<｜Assistant｜>{% endif %}"
)


def _serve(path):
    app = build_app(ServeConfig(engine=engine_config(model=str(path)), served_model_names=("tiny",)))
    return ServerThread(app)


def _with_template(path, template: str):
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    cfg["chat_template"] = template
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # A long context: the tools' listing takes ~700 tokens of the tiny byte-level vocabulary.
    path = build_model(tmp_path_factory.mktemp("tools-llama"), "llama", max_position_embeddings=4096)
    with _serve(path) as srv:
        yield openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _calls(msg) -> list[tuple[str, dict]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls or []]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}},
                                    {"type": "function", "function": {"name": "get_weather"}}])
@pytest.mark.parametrize("parallel", [True, False])
def test_forced_calls_validate_and_stream_the_same(client, choice, parallel):
    kw = dict(model="tiny", messages=MSGS, tools=TOOLS, tool_choice=choice, parallel_tool_calls=parallel,
              max_tokens=1000, temperature=1.0)
    for seed in range(2):
        r = client.chat.completions.create(seed=seed, **kw)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.content is None
        calls = _calls(c.message)
        assert calls and (parallel or len(calls) == 1)
        for (name, args), tc in zip(calls, c.message.tool_calls):
            assert tc.id.startswith("call_") and tc.type == "function"
            if isinstance(choice, dict):
                assert name == choice["function"]["name"]
            jsonschema_rs.validate(SCHEMAS[name], args)
        with client.chat.completions.stream(seed=seed, **kw) as s:
            for _ in s:
                pass
            final = s.get_final_completion().choices[0]
        assert final.finish_reason == "tool_calls"
        assert _calls(final.message) == calls


def test_auto_and_none(client):
    r = client.chat.completions.create(model="tiny", messages=MSGS, tools=TOOLS, tool_choice="auto", max_tokens=20,
                                       seed=1)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    r = client.chat.completions.create(model="tiny", messages=MSGS, tools=TOOLS, tool_choice="none", max_tokens=5)
    assert not r.choices[0].message.tool_calls


@pytest.mark.parametrize("kw,param", [
    ({"tools": [{"type": "function", "function": {"name": "x y"}}]}, "tools[0].function.name"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}],
      "tool_choice": "required"}, "tools"),
])
def test_bad_tool_requests_are_400s(client, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=5, **kw)
    assert e.value.body["param"] == param, e.value.body


def _agent_loop(client) -> str:
    """call -> tool result -> answer, as an agent framework runs it."""
    msgs = list(MSGS)
    r = client.chat.completions.create(model="tiny", messages=msgs, tools=TOOLS, max_tokens=300, temperature=1.0,
                                       seed=5, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = r.choices[0].message.tool_calls[0]
    msgs.append(r.choices[0].message.model_dump(exclude_none=True))
    msgs.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp": 21})})
    r = client.chat.completions.create(model="tiny", messages=msgs, tools=TOOLS, tool_choice="none", max_tokens=8)
    assert r.choices[0].finish_reason in ("stop", "length")
    return call.function.arguments


def test_agent_loop_generic_template(client):
    _agent_loop(client)


@pytest.mark.parametrize("family", ["qwen2", "deepseek"])
def test_agent_loop_through_model_templates(tmp_path_factory, family):
    from jevons.loader.tokenizer import load_hf_tokenizer

    if family == "qwen2":
        path = _with_template(build_model(tmp_path_factory.mktemp("q"), "qwen2", max_position_embeddings=4096),
                              QWEN_TEMPLATE)
    else:
        from test_deepseek_tiny import build_deepseek

        path = _with_template(build_deepseek(tmp_path_factory.mktemp("ds"), "v3", max_position_embeddings=4096),
                              DEEPSEEK_TEMPLATE)
    with _serve(path) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        args = _agent_loop(c)
    # The conversation rendered through the model's own template, tool call and result included.
    msgs = [ChatMessage(**m) for m in [
        *MSGS, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": args}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21C"}]]
    prompt = render_chat_prompt(load_hf_tokenizer(path), msgs, TOOLS)
    if family == "qwen2":
        assert '"name": "get_weather"' in prompt.split("</tools>")[0]  # the template's own tool listing
        assert f'"arguments": {json.dumps(json.loads(args), ensure_ascii=False)}' in prompt
        assert "<tool_response>\n21C\n</tool_response>" in prompt
    else:
        assert "<tools>" in prompt  # DeepSeek's template reads no `tools`: they go in the system text
        assert f"<｜tool▁sep｜>get_weather\n```json\n{args}\n```" in prompt
        assert "<｜tool▁output▁begin｜>21C<｜tool▁output▁end｜>" in prompt
