"""Grammars compiled against one tokenizer, on xgrammar (docs/architecture.md
says why xgrammar and not llguidance).

The vocabulary is given to xgrammar as raw bytes per token id, read through
the tokenizer's own byte scheme (loader/token_bytes.py), so any tokenizer we
load works, a GGUF's included. Special tokens get no bytes: a grammar can
never spell `<|im_end|>` or `<|im_start|>` as text; the end-of-sequence ids
are the grammar's stop tokens, allowed once the output is complete."""
from __future__ import annotations

import json
import threading
from typing import Any

import xgrammar as xgr

from jevons.sampling_params import StructuredOutputsParams
from jevons.structured.contracts import GrammarError, GrammarTokenizer
from jevons.structured.schema_fix import fix_schema


class GrammarBackend:
    """Compiles StructuredOutputsParams into xgrammar grammars, cached by
    their text (xgrammar's own cache), and makes matchers for them."""

    def __init__(self, tokenizer: GrammarTokenizer, vocab_size: int, max_threads: int = 2) -> None:
        # The model's logits may be wider than the tokenizer (padded vocab):
        # ids past the tokenizer get no bytes and are never allowed.
        special = tokenizer.special_token_ids - tokenizer.eos_token_ids
        vocab = [b"" if i in special else tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
        self.stop_token_ids = sorted(tokenizer.eos_token_ids)
        self.info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=vocab_size,
                                      stop_token_ids=self.stop_token_ids)
        self.vocab_size = vocab_size
        # Compiled grammars are cached by their text; bounded, as every distinct
        # schema a client sends would otherwise stay in memory for good.
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=max_threads, cache_limit_bytes=256 << 20)
        self._lock = threading.Lock()  # the server thread validates while the engine thread compiles

    def compile(self, spec: StructuredOutputsParams) -> xgr.CompiledGrammar:
        """The compiled grammar; a GrammarError naming spec.param if it is invalid."""
        try:
            with self._lock:
                return self._compile(spec)
        except GrammarError:
            raise
        except Exception as e:  # xgrammar's own error types vary by version; any failure is the input's
            what = {"json": "JSON schema", "regex": "regex", "grammar": "grammar", "choice": "choice",
                    "structural_tag": "structural tag"}.get(spec.kind, spec.kind)
            raise GrammarError(f"{spec.param}: invalid {what}: {_first_line(e)}", spec.param) from None

    def _compile(self, spec: StructuredOutputsParams) -> xgr.CompiledGrammar:
        if spec.json_object:
            return self.compiler.compile_json_schema(json.dumps({"type": "object"}), any_whitespace=False)
        if spec.json is not None:
            schema = _dumps(_loads(spec.json, spec.param) if isinstance(spec.json, str) else spec.json, spec.param)
            # No free whitespace: a JSON value always ends (a weak or random model
            # could otherwise pad with spaces until max_tokens).
            return self.compiler.compile_json_schema(schema, any_whitespace=False)
        if spec.regex is not None:
            return self.compiler.compile_regex(spec.regex)
        if spec.choice is not None:
            alts = " | ".join(json.dumps(c, ensure_ascii=False) for c in spec.choice)
            return self.compiler.compile_grammar(f"root ::= {alts}")
        if spec.structural_tag is not None:
            return self.compiler.compile_structural_tag(spec.structural_tag)
        return self.compiler.compile_grammar(spec.grammar)  # type: ignore[arg-type]

    def matcher(self, grammar: xgr.CompiledGrammar) -> xgr.GrammarMatcher:
        return xgr.GrammarMatcher(grammar, override_stop_tokens=self.stop_token_ids)


def _loads(text: str, param: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise GrammarError(f"{param}: the JSON schema is not valid JSON ({e})", param) from None


def _dumps(schema: Any, param: str) -> str:
    if not isinstance(schema, dict):
        raise GrammarError(f"{param}: a JSON schema must be an object, got {type(schema).__name__}", param)
    return json.dumps(fix_schema(schema))


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
