"""`jevons serve / chat / generate / bench / plan / usage`."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from jevons.cli_args import add_engine_args, add_sampling_args, engine_config, preflight, sampling_params

# The shared flags live in cli_args (re-exported: callers still find them here).
__all__ = ["add_engine_args", "add_sampling_args", "build_parser", "engine_config", "main", "sampling_params"]


def cmd_generate(a: argparse.Namespace) -> int:
    from jevons.chat_cli import generate_once

    return generate_once(a) if preflight(a, "generate") else 2


def cmd_chat(a: argparse.Namespace) -> int:
    from jevons.chat_cli import chat_loop

    return chat_loop(a) if preflight(a, "chat") else 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jevons", description="Serve open reasoning models at the lowest cost per token.")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="complete one prompt and print it")
    g.add_argument("prompt")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    add_engine_args(g)
    add_sampling_args(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="interactive chat in the terminal, streaming tokens")
    c.add_argument("--system", default=None)
    add_engine_args(c)
    add_sampling_args(c)
    c.set_defaults(func=cmd_chat)

    pp = sub.add_parser("perplexity", help="perplexity on a fixed text (llama-perplexity's scoring)")
    pp.add_argument("--file", default=None, help="text file (default: a shipped public-domain text)")
    pp.add_argument("--ctx", type=int, default=512, help="window length; the second half of each is scored")
    pp.add_argument("--path", default="prefill", choices=["prefill", "decode", "both"],
                    help="prefill: one forward per window (as a prompt runs); decode: each window teacher-forced "
                         "one token per step (as generation runs; ctx steps per window); both: each, and their "
                         "relative difference")
    pp.add_argument("--max-windows", type=int, default=None, help="score only the first N windows")
    add_engine_args(pp)
    pp.set_defaults(func=lambda a: __import__("jevons.chat_cli", fromlist=["x"]).perplexity_cmd(a))

    for mod, fn in (
        ("jevons.server.cli", "add_serve_parser"),
        ("jevons.bench.cli", "add_bench_parser"),
        ("jevons.cost.plan_cli", "add_plan_parser"),
        ("jevons.cost.usage_cli", "add_usage_parser"),
    ):
        _optional(mod, fn, sub)
    return parser


def _optional(module: str, fn: str, sub) -> None:
    """Subcommands live beside their layer; a missing one just isn't offered."""
    import importlib

    try:
        register: Callable = getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError):
        return
    register(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
