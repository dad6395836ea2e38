"""Terminal front ends: one-shot `generate` and interactive `chat`, both
streaming tokens as they are produced."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from jevons.engine.engine_core import EngineCore


def _llm(a: argparse.Namespace):
    from jevons.cli_args import engine_config
    from jevons.llm import LLM

    return LLM(config=engine_config(a), progress=True)


def _engine(a: argparse.Namespace) -> EngineCore:
    return _llm(a).engine


def _params(a: argparse.Namespace, llm):
    """The flags over the model's defaults: the same defaults `jevons serve` applies."""
    from jevons.cli_args import sampling_params

    return sampling_params(a, llm.generation_defaults)


DIM, RESET = "\x1b[2m", "\x1b[0m"


class _Printer:
    """Writes a reasoning model's <think> section dimmed and apart from the
    answer; other models' text passes straight through. Returns the answer."""

    def __init__(self, core: EngineCore, prompt_ids: list[int], out) -> None:
        from jevons.engine.reasoning import ReasoningParser, prompt_ends_in_think, tokenizer_has_think_tags

        self.out = out
        self.tty = getattr(out, "isatty", lambda: False)()
        self.parser = None
        if tokenizer_has_think_tags(core.tokenizer):
            prompt = core.tokenizer.decode(prompt_ids, skip_special_tokens=False)
            self.parser = ReasoningParser(prompt_ends_in_think(prompt))
        self.answer: list[str] = []
        self.thinking = False

    def feed(self, text: str, final: bool = False) -> None:
        if self.parser is None:
            self._write(text)
            return
        reasoning, content = self.parser.feed(text, final)
        if reasoning:
            if not self.thinking:
                self._write((DIM if self.tty else "") + "[thinking] ", answer=False)
                self.thinking = True
            self._write(reasoning, answer=False)
        if content:
            if self.thinking:
                self._write((RESET if self.tty else "") + "\n[answer] ", answer=False)
                self.thinking = False
            self._write(content)

    def _write(self, text: str, answer: bool = True) -> None:
        self.out.write(text)
        self.out.flush()
        if answer:
            self.answer.append(text)


def stream(core: EngineCore, prompt_ids: list[int], params, out=sys.stdout) -> str:
    """Run one request to completion, writing text as it arrives."""
    core.add_request("cli", prompt_ids, params)
    printer = _Printer(core, prompt_ids, out)
    try:
        while core.has_work():
            for d in core.step():
                printer.feed(d.text, final=d.finish_reason is not None)
    finally:
        core.abort("cli")
        if printer.thinking and printer.tty:
            out.write(RESET)
    return "".join(printer.answer)


def generate_once(a: argparse.Namespace) -> int:
    llm = _llm(a)
    core = llm.engine
    tok = core.tokenizer
    if a.chat:
        ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": a.prompt}]), add_special_tokens=False)
    else:
        ids = tok.encode(a.prompt)
    stream(core, ids, _params(a, llm))
    print()
    return 0


def chat_loop(a: argparse.Namespace) -> int:
    llm = _llm(a)
    core = llm.engine
    tok = core.tokenizer
    params = _params(a, llm)
    history: list[dict[str, Any]] = []
    if a.system:
        history.append({"role": "system", "content": a.system})
    print(f"jevons chat with {core.model_name} - empty line or Ctrl-D to quit, /reset to forget", file=sys.stderr)
    print(f"sampling: temperature {params.temperature:g}, top_p {params.top_p:g}, top_k {params.top_k or 'off'}"
          f" ({'greedy' if params.greedy else '--temperature 0 for the same answer every time'})", file=sys.stderr)
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
            reply = stream(core, ids, _params(a, llm))
        except KeyboardInterrupt:
            reply = ""
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            history.pop()
            continue
        print()
        history.append({"role": "assistant", "content": reply})


def perplexity_cmd(a: argparse.Namespace) -> int:
    from jevons.runner.perplexity import PATHS, default_text, perplexity

    core = _engine(a)
    if core.runner is None:  # the model lives in worker processes (tensor parallel)
        print("jevons perplexity: scoring runs the model in this process; use --tensor-parallel-size 1",
              file=sys.stderr)
        return 2
    text = open(a.file).read() if a.file else default_text()
    paths = PATHS if a.path == "both" else (a.path,)
    mode = " deterministic" if core.runner.every_row_decodes else ""
    results = {}
    for path in paths:
        r = results[path] = perplexity(core, text, a.ctx, path=path, max_windows=a.max_windows, progress=True)
        print(f"model {core.model_name} dtype {core.dtype} quantization {core.quantization}{mode} path {path}: "
              f"perplexity {r.perplexity:.4f} over {r.scored_tokens} tokens ({r.windows} windows of {r.ctx})", flush=True)
    if len(results) == 2:
        p, d = results["prefill"], results["decode"]
        print(f"decode vs prefill: perplexity {d.perplexity / p.perplexity - 1:+.3e} relative "
              f"(NLL sums {d.nll_sum:.6f} vs {p.nll_sum:.6f}{', bitwise equal' if d.nll_sum == p.nll_sum else ''})")
    return 0
