"""Errors the chat path raises name its own fields (max_tokens, stop,
reasoning_effort, ...); a dialect's client sent other names for them.
`rename_param` rewrites an error to name the field the client sent."""
from __future__ import annotations

from collections.abc import Mapping

from jevons.server.errors import APIError


def rename_param(err: APIError, names: Mapping[str, str]) -> APIError:
    """`err` naming the dialect's field for its param (in `param` and in the message)."""
    new = names.get(err.param or "")
    if new is None or err.param is None:
        return err
    return APIError(err.status, err.message.replace(err.param, new), param=new, code=err.code, type=err.type,
                    headers=err.headers)
