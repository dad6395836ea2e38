"""response_format, structured_outputs and guided_* through the real `openai`
client against the tiny random model: the grammar alone must make every
answer valid."""
from __future__ import annotations

import json
import re

import jsonschema_rs  # schemathesis brings it (test extra)
import openai
import pytest

MSG = [{"role": "user", "content": "Describe a thing."}]

# 20 varied schemas: nested objects, arrays, enums, bounded numbers, optional
# fields, patterns, unions. Strings are bounded so that a random model ends them.
SCHEMAS = [
    {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]},
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["n"]},
    {"type": "object", "properties": {"c": {"enum": ["red", "green", "blue"]}}, "required": ["c"]},
    {"type": "object", "properties": {"s": {"type": "string", "maxLength": 5}}, "required": ["s"]},
    {"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 3},
                                             "maxItems": 3}}, "required": ["xs"]},
    {"type": "object", "properties": {"in": {"type": "object", "properties": {"b": {"type": "boolean"},
                                                                             "e": {"enum": [1, 2]}},
                                             "required": ["b", "e"], "additionalProperties": False}},
     "required": ["in"], "additionalProperties": False},
    {"type": "object", "properties": {"req": {"type": "boolean"}, "opt": {"type": "string", "maxLength": 3}},
     "required": ["req"], "additionalProperties": False},
    {"type": "array", "items": {"enum": ["x", "y"]}, "minItems": 1, "maxItems": 4},
    {"type": "object", "properties": {"p": {"type": "null"}, "q": {"const": "fixed"}}, "required": ["p", "q"]},
    {"type": "object", "properties": {"u": {"anyOf": [{"type": "boolean"}, {"enum": [7, 8]}]}}, "required": ["u"]},
    {"type": "object", "properties": {"x": {"type": "number", "minimum": -1, "maximum": 1}}, "required": ["x"]},
    {"type": "object", "properties": {"pts": {"type": "array", "maxItems": 2, "items": {
        "type": "object", "properties": {"x": {"enum": [0, 1]}, "y": {"enum": [0, 1]}}, "required": ["x", "y"],
        "additionalProperties": False}}}, "required": ["pts"], "additionalProperties": False},
    {"type": "object", "properties": {"kind": {"enum": ["a", "b"]}, "n": {"type": "integer", "minimum": 10,
                                                                          "maximum": 20}},
     "required": ["kind", "n"], "additionalProperties": False},
    {"type": "array", "prefixItems": [{"type": "boolean"}, {"enum": ["z"]}], "items": False, "minItems": 2},
    {"type": "object", "properties": {"flags": {"type": "array", "items": {"type": "boolean"}, "minItems": 1,
                                                "maxItems": 3}}, "required": ["flags"]},
    {"type": "object", "properties": {"deep": {"type": "object", "properties": {"deeper": {
        "type": "object", "properties": {"v": {"enum": [True]}}, "required": ["v"], "additionalProperties": False}},
        "required": ["deeper"], "additionalProperties": False}}, "required": ["deep"], "additionalProperties": False},
    {"type": "object", "properties": {"id": {"type": "string", "pattern": "^[a-c]{2}[0-9]$"}}, "required": ["id"]},
    {"type": "object", "properties": {"maybe": {"type": ["integer", "null"], "minimum": 0, "maximum": 5}},
     "required": ["maybe"]},
    {"enum": ["only", "these", "words"]},
    {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "boolean"}, "c": {"type": "boolean"}},
     "required": ["a"], "additionalProperties": False},
]


@pytest.mark.parametrize("i", range(len(SCHEMAS)))
def test_json_schema_responses_validate(client, i):
    schema = SCHEMAS[i]
    rf = {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema, "strict": True}}
    r = client.chat.completions.create(model="tiny", messages=MSG, response_format=rf, max_tokens=120,
                                       temperature=1.0, seed=i, n=2)
    for c in r.choices:
        assert c.finish_reason == "stop", c.message.content
        jsonschema_rs.validate(schema, json.loads(c.message.content))


def test_streamed_json_schema_equals_the_plain_answer(client):
    rf = {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMAS[5]}}
    kw = dict(model="tiny", messages=MSG, response_format=rf, max_tokens=120, temperature=1.0, seed=3)
    plain = client.chat.completions.create(**kw).choices[0].message.content
    text = "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(stream=True, **kw)
                   if ch.choices)
    assert text == plain
    jsonschema_rs.validate(SCHEMAS[5], json.loads(text))


def test_json_object_and_extensions(client):
    r = client.chat.completions.create(model="tiny", messages=MSG, response_format={"type": "json_object"},
                                       max_tokens=200, temperature=0.7, seed=1)
    c = r.choices[0]
    if c.finish_reason == "stop":  # any object may be long; when it ended, it parses
        assert isinstance(json.loads(c.message.content), dict)
    else:
        assert c.message.content.startswith("{")
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=20,
                                       extra_body={"structured_outputs": {"choice": ["alpha", "beta"]}})
    assert r.choices[0].message.content in ("alpha", "beta")
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=20, temperature=1.0,
                                       extra_body={"guided_regex": r"[0-9]{3}-[a-z]{2}"})
    assert re.fullmatch(r"[0-9]{3}-[a-z]{2}", r.choices[0].message.content)
    r = client.completions.create(model="tiny", prompt="Say", max_tokens=40, temperature=1.0, seed=2,
                                  extra_body={"structured_outputs": {"json": SCHEMAS[2]}})
    jsonschema_rs.validate(SCHEMAS[2], json.loads(r.choices[0].text))
    r = client.completions.create(model="tiny", prompt="Say", max_tokens=40, temperature=1.0, seed=2,
                                  extra_body={"response_format": {"type": "json_schema",
                                                                  "json_schema": {"name": "x", "schema": SCHEMAS[0]}}})
    jsonschema_rs.validate(SCHEMAS[0], json.loads(r.choices[0].text))


@pytest.mark.parametrize("body,param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": []}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"response_format": "json"}, "response_format"),
    ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs.regex"),
    ({"structured_outputs": {"grammar": "root ::= undefined_rule"}}, "structured_outputs.grammar"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
    ({"structured_outputs": {"json": {}, "regex": "a"}}, "structured_outputs"),
    ({"structured_outputs": {"xml": "a"}}, "structured_outputs.xml"),
    ({"guided_json": 5}, "guided_json"),
])
def test_bad_constraints_are_400s_naming_the_field(client, body, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MSG, max_tokens=5, extra_body=body)
    assert e.value.status_code == 400
    assert e.value.body["param"] == param, e.value.body
