"""`include: ["reasoning.encrypted_content"]`: a reasoning item carries an
opaque blob that a later request (with `store: false`, as Codex-style clients
run) sends back to continue the same reasoning. OpenAI encrypts its own; jevons
has nothing to hide (the reasoning is in the item's content already), so the
blob is the text itself, tagged and base64-encoded. A blob jevons did not make
(another provider's) cannot be read and is a 400."""
from __future__ import annotations

import base64
import binascii

TAG = "jevons-reasoning-v1:"


def seal(text: str) -> str:
    return TAG + base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii")


def unseal(blob: str) -> str | None:
    """The reasoning a blob holds, or None if it is not one of jevons's."""
    if not blob.startswith(TAG):
        return None
    try:
        return base64.b64decode(blob[len(TAG):].encode("ascii"), altchars=b"-_", validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # not base64 (validate: no character skipped), or not UTF-8
        return None
