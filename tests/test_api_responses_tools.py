"""Tools and structured output through the other two dialects, with the
official clients, on a tiny random model (the grammar alone makes a forced
call valid): Responses function tools (function_call items, streamed
function_call_arguments events, function_call_output round trips, also through
previous_response_id) and text.format json_schema; Anthropic tools (tool_use
blocks, stop_reason tool_use, streamed input_json_delta, tool_result round
trips) and output_config.format."""
from __future__ import annotations

import json

import anthropic
import jsonschema_rs  # schemathesis brings it (test extra)
import openai
import pytest

from jevons.config import engine_config
from jevons.server.app import build_app
from jevons.server.background import ServerThread
from jevons.server.config import ServeConfig
from tiny_models import build_model

ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                        "b": {"type": "integer", "minimum": 0, "maximum": 99}},
       "required": ["a", "b"], "additionalProperties": False}
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6}},
           "required": ["city"], "additionalProperties": False}
RESP_TOOLS = [{"type": "function", "name": "add", "description": "Add two numbers", "parameters": ADD},
              {"type": "function", "name": "get_weather", "parameters": WEATHER}]
CLAUDE_TOOLS = [{"name": "add", "description": "Add two numbers", "input_schema": ADD},
                {"name": "get_weather", "input_schema": WEATHER}]
SCHEMAS = {"add": ADD, "get_weather": WEATHER}
ASK = "What is 2 + 3?"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # A long context: the tools' listing takes hundreds of tokens of the tiny byte-level vocabulary.
    path = build_model(tmp_path_factory.mktemp("dialect-tools"), "llama", max_position_embeddings=4096)
    app = build_app(ServeConfig(engine=engine_config(model=str(path)), served_model_names=("tiny",)))
    with ServerThread(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.url + "/anthropic", api_key="unused", max_retries=0, timeout=120)


def valid(name: str, args: dict) -> bool:
    return jsonschema_rs.validator_for(SCHEMAS[name]).is_valid(args)


@pytest.mark.parametrize("choice, name", [("required", None), ({"type": "function", "name": "get_weather"},
                                                               "get_weather")])
def test_responses_forced_call(client, choice, name):
    # One call (parallel_tool_calls false): the random model would otherwise list calls until max_output_tokens.
    kw = dict(model="tiny", input=ASK, tools=RESP_TOOLS, tool_choice=choice, max_output_tokens=100, temperature=0,
              parallel_tool_calls=False)
    r = client.responses.create(**kw)
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and all(valid(c.name, json.loads(c.arguments)) for c in calls)
    assert name is None or calls[0].name == name
    assert calls[0].call_id.startswith("call_") and calls[0].id.startswith("fc_")
    events = list(client.responses.create(stream=True, **kw))
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert args == "".join(c.arguments for c in calls)
    final = [o for o in events[-1].response.output if o.type == "function_call"]
    assert [(c.name, c.arguments) for c in final] == [(c.name, c.arguments) for c in calls]


def test_responses_tool_round_trip(client):
    first = client.responses.create(model="tiny", input=ASK, tools=RESP_TOOLS, tool_choice={"type": "function",
                                    "name": "add"}, max_output_tokens=100, temperature=0, parallel_tool_calls=False)
    call = next(o for o in first.output if o.type == "function_call")
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "5"}
    items = [{"role": "user", "content": ASK}, call.model_dump(exclude_none=True), result]
    answer = client.responses.create(model="tiny", input=items, tools=RESP_TOOLS, tool_choice="none",
                                     max_output_tokens=5, temperature=0)
    assert answer.output[-1].type == "message" and answer.usage.input_tokens > first.usage.input_tokens
    # The same turn through previous_response_id: only the tool's output is sent.
    chained = client.responses.create(model="tiny", input=[result], previous_response_id=first.id, tools=RESP_TOOLS,
                                      tool_choice="none", max_output_tokens=5, temperature=0)
    assert chained.output_text == answer.output_text


def test_responses_text_format_json_schema(client):
    fmt = {"type": "json_schema", "name": "sum", "schema": ADD, "strict": True}
    r = client.responses.create(model="tiny", input=ASK, text={"format": fmt}, max_output_tokens=40)
    assert jsonschema_rs.validator_for(ADD).is_valid(json.loads(r.output_text))
    assert r.text.format.type == "json_schema"


def test_responses_tool_errors_name_the_field(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="tiny", input=ASK, tools=RESP_TOOLS, tool_choice={"type": "function",
                                "name": "nope"})
    assert e.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="tiny", input=ASK, tools=[{"type": "function", "name": "a b"}])
    assert e.value.body["param"] == "tools[0].name"


@pytest.mark.parametrize("choice, name", [({"type": "any"}, None), ({"type": "tool", "name": "add"}, "add")])
def test_messages_forced_tool_use(claude, choice, name):
    choice = {**choice, "disable_parallel_tool_use": True}  # one call, as above
    kw = dict(model="tiny", max_tokens=100, messages=[{"role": "user", "content": ASK}], tools=CLAUDE_TOOLS,
              tool_choice=choice, extra_body={"temperature": 0})
    m = claude.messages.create(**kw)
    uses = [b for b in m.content if b.type == "tool_use"]
    assert uses and m.stop_reason == "tool_use" and all(valid(u.name, u.input) for u in uses)
    assert name is None or uses[0].name == name
    with claude.messages.stream(**kw) as stream:
        final = stream.get_final_message()
    assert [(b.name, b.input) for b in final.content if b.type == "tool_use"] == [(u.name, u.input) for u in uses]
    assert final.stop_reason == "tool_use"


def test_messages_tool_round_trip(claude):
    ask = [{"role": "user", "content": ASK}]
    first = claude.messages.create(model="tiny", max_tokens=100, messages=ask, tools=CLAUDE_TOOLS,
                                   tool_choice={"type": "tool", "name": "add", "disable_parallel_tool_use": True})
    use = next(b for b in first.content if b.type == "tool_use")
    turn = [*ask, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "5"}]}]
    answer = claude.messages.create(model="tiny", max_tokens=5, messages=turn, tools=CLAUDE_TOOLS,
                                    tool_choice={"type": "none"})
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert not [b for b in answer.content if b.type == "tool_use"]
    assert claude.messages.count_tokens(model="tiny", messages=turn, tools=CLAUDE_TOOLS).input_tokens == \
        answer.usage.input_tokens + answer.usage.cache_read_input_tokens


def test_messages_output_config_format(claude):
    m = claude.messages.create(model="tiny", max_tokens=40, messages=[{"role": "user", "content": ASK}],
                               output_config={"format": {"type": "json_schema", "schema": ADD}})
    assert jsonschema_rs.validator_for(ADD).is_valid(json.loads(m.content[0].text))
