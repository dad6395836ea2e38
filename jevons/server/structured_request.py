"""Request fields that constrain the output -> StructuredOutputsParams.

- OpenAI's `response_format`: {"type": "text"}, {"type": "json_object"},
  {"type": "json_schema", "json_schema": {"name", "schema", "strict"}};
- vLLM's `structured_outputs`: {"json" | "regex" | "choice" | "grammar" |
  "json_object"}, and its older `guided_json`, `guided_regex`,
  `guided_choice`, `guided_grammar`.

Shape errors are 400s naming the field here; a schema, regex or grammar the
grammar compiler rejects is a 400 from `check_structured` (compiled off the
event loop, then cached for the engine)."""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from jevons.sampling_params import SamplingParams, StructuredOutputsParams
from jevons.server.errors import APIError
from jevons.server.prompt_limits import off_loop
from jevons.structured import GrammarError

GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}
_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


def from_response_format(rf: Any) -> StructuredOutputsParams | None:
    if rf is None:
        return None
    if not isinstance(rf, dict):
        raise APIError(400, "response_format must be an object", param="response_format")
    kind = rf.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True, param="response_format")
    if kind != "json_schema":
        raise APIError(400, f"response_format.type must be one of 'text', 'json_object', 'json_schema', got {kind!r}",
                       param="response_format.type")
    js = rf.get("json_schema")
    if not isinstance(js, dict):
        raise APIError(400, "response_format.json_schema must be an object with a name and a schema",
                       param="response_format.json_schema")
    name = js.get("name")
    if name is not None and not isinstance(name, str):
        raise APIError(400, "response_format.json_schema.name must be a string", param="response_format.json_schema.name")
    schema = js.get("schema", {})  # OpenAI: an absent schema allows any JSON
    if not isinstance(schema, dict):
        raise APIError(400, "response_format.json_schema.schema must be a JSON schema object",
                       param="response_format.json_schema.schema")
    return StructuredOutputsParams(json=schema, param="response_format.json_schema.schema")


def from_extensions(body: Any) -> StructuredOutputsParams | None:
    """vLLM's structured_outputs object, or one of its guided_* fields."""
    so = getattr(body, "structured_outputs", None)
    guided = {k: getattr(body, k, None) for k in GUIDED if getattr(body, k, None) is not None}
    if so is not None and guided:
        raise APIError(400, f"give structured_outputs or {next(iter(guided))}, not both", param=next(iter(guided)))
    if len(guided) > 1:
        raise APIError(400, f"give only one of {', '.join(guided)}", param=list(guided)[1])
    if guided:
        field, value = next(iter(guided.items()))
        so, param = {GUIDED[field]: value}, field
    elif so is None:
        return None
    else:
        param = "structured_outputs"
    if not isinstance(so, dict):
        raise APIError(400, "structured_outputs must be an object", param="structured_outputs")
    unknown = sorted(set(so) - set(_KINDS) - {"disable_any_whitespace", "disable_additional_properties",
                                               "whitespace_pattern", "backend"})
    if unknown:
        raise APIError(400, f"structured_outputs.{unknown[0]} is not supported (supported: {', '.join(_KINDS)})",
                       param=f"structured_outputs.{unknown[0]}")
    given = {k: so[k] for k in _KINDS if so.get(k) not in (None, False)}
    if len(given) != 1:
        raise APIError(400, f"structured_outputs must set exactly one of {', '.join(_KINDS)}", param=param)
    kind, value = next(iter(given.items()))
    where = param if guided else f"structured_outputs.{kind}"
    _check_kind(kind, value, where)
    if kind == "json" and isinstance(value, str):
        return StructuredOutputsParams(json=value, param=where)
    if kind == "structural_tag" and isinstance(value, dict):
        value = json.dumps(value)
    return StructuredOutputsParams(**{kind: value}, param=where)


def _check_kind(kind: str, value: Any, where: str) -> None:
    ok = {
        "json": isinstance(value, (dict, str)),
        "regex": isinstance(value, str) and value != "",
        "grammar": isinstance(value, str) and value.strip() != "",
        "choice": isinstance(value, list) and bool(value) and all(isinstance(c, str) for c in value),
        "json_object": value is True,
        "structural_tag": isinstance(value, (str, dict)),
    }[kind]
    if not ok:
        want = {"json": "a JSON schema (an object or its JSON text)", "regex": "a non-empty regex string",
                "grammar": "a non-empty EBNF grammar string", "choice": "a non-empty list of strings",
                "json_object": "true", "structural_tag": "an xgrammar structural tag (an object or its JSON text)"}[kind]
        raise APIError(400, f"{where} must be {want}", param=where)


async def check_structured(engine: Any, params: SamplingParams, spec: StructuredOutputsParams | None) -> SamplingParams:
    """`params` with `spec`, after compiling it off the event loop (a 400
    naming the field when it does not compile) for every replica's engine,
    so that none compiles it on the loop when the request is added."""
    if spec is None:
        return params
    cores = [e.core for e in getattr(engine, "engines", None) or [engine]]
    try:
        for core in cores:
            await off_loop(core.structured.validate, spec)
    except GrammarError as e:
        raise APIError(400, str(e), param=e.param) from None
    return replace(params, structured_outputs=spec)


def request_spec(body: Any, after_reasoning: bool = False) -> StructuredOutputsParams | None:
    """The constraint a chat or completions body asks for, if any."""
    rf = from_response_format(getattr(body, "response_format", None))
    ext = from_extensions(body)
    if rf is not None and ext is not None:
        raise APIError(400, f"give response_format or {ext.param.split('.')[0]}, not both", param="response_format")
    spec = rf or ext
    return replace(spec, after_reasoning=True) if spec is not None and after_reasoning else spec
