"""Terminal front ends: one-shot `generate` and interactive `chat`, both
streaming tokens as they are produced."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from jevons.engine.engine_core import EngineCore


def _engine(a: argparse.Namespace) -> EngineCore:
    from jevons.cli import engine_kwargs
    from jevons.entrypoints import LLM

    return LLM(**engine_kwargs(a), progress=True).engine


def stream(core: EngineCore, prompt_ids: list[int], params, out=sys.stdout) -> str:
    """Run one request to completion, writing text as it arrives."""
    core.add_request("cli", prompt_ids, params)
    text = []
    try:
        while core.has_work():
            for d in core.step():
                out.write(d.text)
                out.flush()
                text.append(d.text)
    finally:
        core.abort("cli")
    return "".join(text)


def generate_once(a: argparse.Namespace) -> int:
    from jevons.cli import sampling_params

    core = _engine(a)
    tok = core.tokenizer
    if a.chat:
        ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": a.prompt}]), add_special_tokens=False)
    else:
        ids = tok.encode(a.prompt)
    stream(core, ids, sampling_params(a))
    print()
    return 0


def chat_loop(a: argparse.Namespace) -> int:
    from jevons.cli import sampling_params

    core = _engine(a)
    tok = core.tokenizer
    history: list[dict[str, Any]] = []
    if a.system:
        history.append({"role": "system", "content": a.system})
    print(f"jevons chat with {core.model_name} - empty line or Ctrl-D to quit, /reset to forget", file=sys.stderr)
    while True:
        try:
            line = input(">>> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not line.strip():
            return 0
        if line.strip() == "/reset":
            history = history[:1] if a.system else []
            continue
        history.append({"role": "user", "content": line})
        ids = tok.encode(tok.apply_chat_template(history), add_special_tokens=False)
        try:
            reply = stream(core, ids, sampling_params(a))
        except KeyboardInterrupt:
            reply = ""
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            history.pop()
            continue
        print()
        history.append({"role": "assistant", "content": reply})
