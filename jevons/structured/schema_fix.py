"""Work-arounds applied to a JSON schema before xgrammar compiles it.

xgrammar 0.2.9 compiles a string with minLength/maxLength to a character
class that lets raw control characters (U+0000..U+001F) through, which no
JSON parser accepts: `{"type": "string", "maxLength": 6}` could yield
`"ab\\x1c"`. Such a string (with no pattern or format of its own) gets the
equivalent pattern instead, which xgrammar compiles correctly; the cost is
that the model cannot write `"` or `\\` escapes inside those bounded strings."""
from __future__ import annotations

from typing import Any


def fix_schema(schema: Any) -> Any:
    """A copy of `schema` with the work-arounds applied (the input is not changed)."""
    if isinstance(schema, list):
        return [fix_schema(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: fix_schema(v) for k, v in schema.items()}
    if _bounded_string(out):
        lo, hi = out.pop("minLength", 0), out.pop("maxLength", "")
        out["pattern"] = f"^[^\\x00-\\x1f]{{{lo},{hi}}}$"
    return out


def _bounded_string(s: dict[str, Any]) -> bool:
    return (s.get("type") == "string" and ("minLength" in s or "maxLength" in s)
            and not {"pattern", "format", "enum", "const"} & s.keys()
            and all(isinstance(s.get(k, 0), int) and not isinstance(s.get(k, 0), bool) and s.get(k, 0) >= 0
                    for k in ("minLength", "maxLength")))
