"""Errors the chat path raises name its own fields (max_tokens, stop,
tools[0].function.name, ...); a dialect's client sent other names for them.
`rename_param` rewrites an error to name the field the client sent."""
from __future__ import annotations

import re
from collections.abc import Mapping

from jevons.server.errors import APIError


def rename_param(err: APIError, names: Mapping[str, str]) -> APIError:
    """`err` naming the dialect's field, in `param` and in the message. `names`
    maps a chat param (a regular expression matching all of it) to the
    dialect's (a replacement, so r"tools[\\1].name" can keep an index)."""
    if err.param is None:
        return err
    for pattern, repl in names.items():
        m = re.fullmatch(pattern, err.param)
        if m is not None:
            new = m.expand(repl)
            return APIError(err.status, err.message.replace(err.param, new), param=new, code=err.code,
                            type=err.type, headers=err.headers)
    return err
