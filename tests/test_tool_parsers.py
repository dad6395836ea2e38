"""Tool-call parsers on hand-written model outputs, whole and streamed split
at every character boundary: the same content and calls, and no partial
marker ever sent as content."""
from __future__ import annotations

import json

import pytest

from jevons.server.tool_calls.forced import ForcedParser, forced_schema
from jevons.server.tool_calls.plan import parse_choice, parse_tools
from jevons.server.tool_calls.prompt import prepare
from jevons.server.tool_calls.registry import PARSERS, parser_name_for
from jevons.server.tool_calls.types import ToolChoice

DS_V3 = ("Let me check.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
         '{"city": "Paris"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>add\n```json\n'
         '{"a": 1, "b": 2}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>')
DS_V31 = ('<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>'
          '<｜tool▁call▁begin｜>add<｜tool▁sep｜>{"a": 1, "b": 2}<｜tool▁call▁end｜><｜tool▁calls▁end｜>')
HERMES = ('I will call two tools.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
          '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>')
LLAMA3 = '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "add", "parameters": {"a": 1, "b": 2}}'
TWO = [("get_weather", {"city": "Paris"}), ("add", {"a": 1, "b": 2})]
DS_V32 = ('Checking.\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name="get_weather">\n'
          '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n</｜DSML｜invoke>\n'
          '<｜DSML｜invoke name="add">\n<｜DSML｜parameter name="a" string="false">1</｜DSML｜parameter>\n'
          '<｜DSML｜parameter name="b" string="false">2</｜DSML｜parameter>\n</｜DSML｜invoke>\n'
          '</｜DSML｜function_calls>')

CASES = [
    ("deepseek_v3", DS_V3, "Let me check.", TWO),
    ("deepseek_v31", DS_V31, "", TWO),
    ("deepseek_v32", DS_V32, "Checking.\n\n\n", TWO),
    ("deepseek_v32", '<｜DSML｜invoke name="add">{"a": 1, "b": 2}</｜DSML｜invoke>', "", TWO[1:]),
    ("hermes", HERMES, "I will call two tools.\n", TWO),
    ("hermes", HERMES + "\nDone.", "I will call two tools.\n\n\nDone.", TWO),  # text after the calls stays
    ("llama3_json", LLAMA3, "", TWO),
    ("llama3_json", '  {"name": "add", "arguments": {"a": 1, "b": 2}}', "", TWO[1:]),
    # Not calls: the text is content, whole.
    ("hermes", "a < b and <tool_c is not a tag", "a < b and <tool_c is not a tag", []),
    ("hermes", "<tool_call>not json</tool_call> done", "<tool_call>not json</tool_call> done", []),
    ("llama3_json", "Sure: {not a call}", "Sure: {not a call}", []),
    ("llama3_json", '{"answer": 42}', '{"answer": 42}', []),
    ("deepseek_v3", "plain answer", "plain answer", []),
]


def _run(name: str, pieces: list[str]) -> tuple[str, list[tuple[str, dict]]]:
    p = PARSERS[name]()
    content, calls = "", []
    for i, piece in enumerate(pieces):
        c, new = p.feed(piece, i == len(pieces) - 1)
        content += c
        calls += new
    return content, [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize("name,text,content,calls", CASES)
def test_whole_and_split_at_every_boundary(name, text, content, calls):
    assert _run(name, [text]) == (content, calls)
    for cut in range(1, len(text)):
        got = _run(name, [text[:cut], text[cut:]])
        assert got == (content, calls), cut
    # One character at a time: no marker fragment ever reaches the content.
    got, _ = _run(name, list(text) + [""])
    assert got == content


def test_unfinished_call_stays_content():
    p = PARSERS["hermes"]()
    assert p.feed("x <tool_call>{\"name\": \"f\"", False) == ("x ", [])
    content, calls = p.feed("", True)
    assert calls == [] and content == "<tool_call>{\"name\": \"f\""


def test_parser_from_template():
    assert parser_name_for("...<｜tool▁calls▁begin｜>...") == "deepseek_v3"
    assert parser_name_for("{{ '<tool_call>' }}") == "hermes"
    assert parser_name_for("<|python_tag|>") == "llama3_json"
    assert parser_name_for("<｜DSML｜function_calls>") == "deepseek_v32"
    assert parser_name_for(None) == "hermes"


def test_forced_parsers():
    named = ForcedParser(ToolChoice("named", "add"))
    assert named.feed('{"a": 1,', False) == ("", [])
    content, calls = named.feed(' "b": 2}', True)
    assert content == "" and calls[0].name == "add" and json.loads(calls[0].arguments) == {"a": 1, "b": 2}
    req = ForcedParser(ToolChoice("required"))
    _, calls = req.feed('[{"name": "f", "parameters": {}}, {"name": "g", "parameters": {"x": 1}}]', True)
    assert [(c.name, c.arguments) for c in calls] == [("f", "{}"), ("g", '{"x": 1}')]
    assert ForcedParser(ToolChoice("required")).feed('[{"name": "f", "param', True) == ('[{"name": "f", "param', [])
    tools = parse_tools([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    assert forced_schema(tools, ToolChoice("required", parallel=False))["maxItems"] == 1
    assert forced_schema(tools, ToolChoice("named", "f")) == {"type": "object"}


@pytest.mark.parametrize("tools,choice,param", [
    ("x", None, "tools"),
    ([{"type": "retrieval"}], None, "tools[0].type"),
    ([{"type": "function", "function": {"name": "bad name"}}], None, "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": []}}], None, "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f"}}] * 2, None, "tools[1].function.name"),
    ([{"type": "function", "function": {"name": "f"}}], {"type": "function", "function": {"name": "g"}}, "tool_choice"),
    ([{"type": "function", "function": {"name": "f"}}], "sometimes", "tool_choice"),
    (None, "required", "tool_choice"),
])
def test_bad_tools_name_the_field(tools, choice, param):
    from jevons.server.errors import APIError

    with pytest.raises(APIError) as e:
        parse_choice(choice, parse_tools(tools), None)
    assert e.value.param == param


def test_tool_turns_in_a_template_without_tool_support():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    msgs = [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"}]
    out, t = prepare(msgs, tools, "{% for m in messages %}{{ m.content }}{% endfor %}")
    assert t is None and out[0]["role"] == "system" and '"name": "f"' in out[0]["content"]
    assert out[2]["content"] == '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    assert out[3] == {"role": "user", "content": "<tool_response>\n42\n</tool_response>"}
    # A template that writes tool calls with tojson gets the arguments as an object.
    out, t = prepare(msgs, tools, "{{ tools }}{% for c in m.tool_calls %}{{ c.function.arguments | tojson }}{% endfor %}")
    assert t == tools and out[1]["tool_calls"][0]["function"]["arguments"] == {"x": 1}


def test_parser_override_wins_over_the_template():
    from types import SimpleNamespace

    from jevons.server.tool_calls.plan import tool_plan

    body = SimpleNamespace(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice=None,
                           parallel_tool_calls=False)
    plan = tool_plan(body, "<tool_call>", "deepseek_v3")
    assert plan.parser_name == "deepseek_v3" and plan.choice.mode == "auto" and not plan.choice.parallel
    p = plan.parser()
    _, calls = p.feed(DS_V31, True)
    assert [c.name for c in calls] == ["get_weather"]  # parallel_tool_calls false: the first call only


class _ByteTokenizer:
    """Every byte a token, id 256 the EOS: enough for compiling and matching."""

    vocab_size = 257
    eos_token_ids = frozenset({256})
    special_token_ids = frozenset({256})

    def token_bytes(self, i: int) -> bytes:
        return bytes([i]) if i < 256 else b""


@pytest.mark.parametrize("parser,good,bad", [
    ("hermes", 'Sure. <tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>',
     '<tool_call>\n{"name": "add", "arguments": {"a": "one", "b": 2}}\n</tool_call>'),
    ("deepseek_v3", "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>add\n```json\n"
                    '{"a": 1, "b": 2}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
     "<｜tool▁call▁begin｜>function<｜tool▁sep｜>sub\n```json\n{}\n```<｜tool▁call▁end｜>"),
    ("llama3_json", '{"name": "add", "parameters": {"a": 1, "b": 2}}', '{"name": "add", "parameters": {"a": 1}}'),
])
def test_strict_functions_in_auto_mode_hold_the_call_format(parser, good, bad):
    import xgrammar as xgr

    from jevons.server.tool_calls.strict import strict_spec
    from jevons.structured.backend import GrammarBackend

    tools = parse_tools([{"type": "function", "function": {
        "name": "add", "strict": True, "parameters": {"type": "object", "properties": {
            "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}])
    assert strict_spec(tools, parser, True) is not None
    assert strict_spec(parse_tools([{"type": "function", "function": {"name": "f"}}]), parser, True) is None
    backend = GrammarBackend(_ByteTokenizer(), 257)
    grammar = backend.compile(strict_spec(tools, parser, True))

    def accepts(text: str) -> bool:
        return xgr.GrammarMatcher(grammar).accept_string(text)

    assert accepts(good) and accepts("no call at all") and not accepts(bad)
    _, calls = PARSERS[parser]().feed(good, True)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("add", {"a": 1, "b": 2})]


@pytest.mark.parametrize("calls,param", [
    (1, "messages[0].tool_calls"),
    ([{"function": 1}], "messages[0].tool_calls[0].function"),
    ([{"function": {"name": "f", "arguments": 3}}], "messages[0].tool_calls[0].function.arguments"),
])
def test_malformed_tool_turns_are_400s(calls, param):
    from jevons.server.errors import APIError

    with pytest.raises(APIError) as e:
        prepare([{"role": "assistant", "content": "", "tool_calls": calls}], None, None)
    assert e.value.param == param
