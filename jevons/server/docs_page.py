"""GET /docs: the API reference as one self-contained HTML page.

FastAPI's default /docs is Swagger UI, whose JavaScript and CSS load from a CDN:
on a machine without internet it is a blank page. This one is rendered on the
server from app.openapi() (so it lists every route the app has, with the same
pydantic models) and needs nothing else: no script, no stylesheet, no font
from anywhere. The machine-readable schema stays at /openapi.json."""
from __future__ import annotations

import html
import json
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse

_METHODS = ("get", "post", "put", "patch", "delete")

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1 { margin-bottom: 0; } h2 { border-bottom: 1px solid #ccc; margin-top: 2rem; }
code, pre { font: 13px ui-monospace, monospace; background: #f4f4f4; }
pre { padding: .5rem; overflow-x: auto; }
.op { margin: 1rem 0; padding: .5rem .8rem; border-left: 4px solid #888; background: #fafafa; }
.m { display: inline-block; min-width: 4rem; font-weight: bold; text-transform: uppercase; }
.get { border-color: #2a7ae2; } .post { border-color: #2e9d4d; } .delete { border-color: #c0392b; }
table { border-collapse: collapse; margin: .4rem 0; } td, th { padding: .15rem .6rem; text-align: left;
vertical-align: top; border-bottom: 1px solid #e4e4e4; } .req { color: #c0392b; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _prose(text: str) -> str:
    """Escaped text with `code` spans and paragraphs; nothing else of Markdown."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", text or "") if p.strip()]
    return "".join("<p>" + re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(p)) + "</p>" for p in paras)


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return _ref_name(schema["$ref"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return " | ".join(_type(s) for s in schema[key])
    t = schema.get("type", "any")
    if t == "array":
        return f"array[{_type(schema.get('items', {}))}]"
    if "enum" in schema:
        return " | ".join(repr(v) for v in schema["enum"])
    return str(t)


def _default(schema: dict[str, Any]) -> str:
    return f" = <code>{_e(json.dumps(schema['default']))}</code>" if "default" in schema else ""


def _fields_table(schema: dict[str, Any]) -> str:
    props: dict[str, Any] = schema.get("properties") or {}
    if not props:
        return ""
    required = set(schema.get("required") or ())
    rows = "".join(
        f"<tr><td><code>{_e(name)}</code>{' <span class=req>*</span>' if name in required else ''}</td>"
        f"<td>{_e(_type(p))}{_default(p)}</td><td>{_e(p.get('description', ''))}</td></tr>"
        for name, p in props.items()
    )
    return f"<table><tr><th>field</th><th>type</th><th>description</th></tr>{rows}</table>"


def _operation(path: str, method: str, op: dict[str, Any], schemas: dict[str, Any]) -> str:
    out = [f'<div class="op {method}" id="{_e(op.get("operationId", method + path))}">',
           f'<span class="m">{method}</span> <code>{_e(path)}</code> &mdash; {_e(op.get("summary", ""))}',
           _prose(op.get("description", ""))]
    params = op.get("parameters") or []
    if params:
        rows = "".join(
            f"<tr><td><code>{_e(p['name'])}</code>{' <span class=req>*</span>' if p.get('required') else ''}</td>"
            f"<td>{_e(p.get('in', ''))}</td><td>{_e(_type(p.get('schema', {})))}</td>"
            f"<td>{_e(p.get('description', ''))}</td></tr>"
            for p in params
        )
        out.append(f"<table><tr><th>parameter</th><th>in</th><th>type</th><th>description</th></tr>{rows}</table>")
    body = (op.get("requestBody") or {}).get("content", {})
    for media, content in body.items():
        schema = content.get("schema", {})
        name = _type(schema)
        resolved = schemas.get(_ref_name(schema["$ref"]), {}) if "$ref" in schema else schema
        out.append(f"<details><summary>body: <code>{_e(media)}</code> {_e(name)}</summary>"
                   f"{_fields_table(resolved)}</details>")
    responses = op.get("responses") or {}
    if responses:
        codes = ", ".join(
            f"<code>{_e(code)}</code> {_e(r.get('description', ''))}"
            + (f" ({_e(', '.join(r['content']))})" if r.get("content") else "")
            for code, r in responses.items()
        )
        out.append(f"<p>responses: {codes}</p>")
    out.append("</div>")
    return "".join(out)


def render_docs(spec: dict[str, Any], base_url: str) -> str:
    """The page for an OpenAPI spec. `base_url` (this server, as the client
    reached it) stands in for the HOST:PORT placeholder of the description."""
    info = spec.get("info", {})
    schemas = (spec.get("components") or {}).get("schemas") or {}
    by_tag: dict[str, list[str]] = {}
    for path, ops in (spec.get("paths") or {}).items():
        for method in _METHODS:
            if method in ops:
                op = ops[method]
                tag = (op.get("tags") or ["Other"])[0]
                by_tag.setdefault(tag, []).append(_operation(path, method, op, schemas))
    description = (info.get("description") or "").replace("http://HOST:PORT", base_url.rstrip("/"))
    sections = "".join(f"<h2>{_e(tag)}</h2>{''.join(ops)}" for tag, ops in by_tag.items())
    model_list = ", ".join(f"<code>{_e(n)}</code>" for n in sorted(schemas))
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(info.get('title', 'API'))} API</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_e(info.get('title', 'API'))} <small>{_e(info.get('version', ''))}</small></h1>"
        f"{_prose(description)}"
        '<p>The full schema, for clients and code generators: <a href="openapi.json">/openapi.json</a>. '
        "Fields marked <span class=req>*</span> are required.</p>"
        f"{sections}<h2>Schemas</h2><p>{model_list}</p></body></html>"
    )


def install_docs(app: FastAPI) -> None:
    """/docs serves the page; /redoc (also a CDN page in FastAPI) points to it.
    Build the app with docs_url=None and redoc_url=None."""

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        return HTMLResponse(render_docs(request.app.openapi(), str(request.base_url)))

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> RedirectResponse:
        return RedirectResponse("docs")
