"""Request bodies, as OpenAI and DeepSeek define them, plus vLLM's common
extensions (top_k, min_p, repetition_penalty, ignore_eos, ...).

No silent drops: a completion request's fields either work or get a 400.
Fields nobody defines are kept (`extra="allow"`) so that the route can name
them ("Unrecognized request argument supplied: foo", as OpenAI answers);
OpenAI fields this server cannot honour yet are the table `UNSUPPORTED`;
bookkeeping fields that change nothing in the output are `IGNORED`. With
`--lenient` both kinds are logged and dropped instead (sampling.check_fields).
Ranges that SamplingParams already checks are not repeated here: one source of
truth, and its message names the field.

Types are strict, as OpenAI's schema has them: "10" is not an integer, "yes"
not a boolean, 1.0 not an integer, and NaN or Infinity (which Python's JSON
parser accepts) not a number. Every string anywhere in a body must be valid
Unicode: a lone surrogate ("\\ud800", which JSON can spell) is a 400 naming
where it was, not a failure in the tokenizer or the response encoder."""
from __future__ import annotations

from typing import Annotated, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, field_validator, model_validator
from pydantic_core import PydanticCustomError

Int = Annotated[int, Strict()]
Num = Annotated[float, Strict(), Field(allow_inf_nan=False)]  # an int is a number too
Bool = StrictBool


def _path(parent: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def find_invalid_unicode(data: Any) -> tuple[str, str] | None:
    """(where, which code point) of the first string (or dict key) that is not
    valid Unicode, i.e. holds a lone surrogate; None if every string is fine."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                return where or "body", f"U+{ord(v[e.start]):04X}"
        elif isinstance(v, dict):
            for k, x in reversed(v.items()):  # popped in order: the first bad string is named
                stack.append((_path(where, k), x))
                if isinstance(k, str):
                    stack.append((where or "body", k))
        elif isinstance(v, (list, tuple)):
            stack.extend((_path(where, i), x) for i, x in reversed(list(enumerate(v))))
    return None


class _ValidUnicode(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        bad = find_invalid_unicode(data)
        if bad is not None:
            where, char = bad
            raise PydanticCustomError(
                "invalid_unicode", "not valid Unicode (it holds the lone surrogate {char}); send UTF-8 text",
                {"param": where, "char": char})
        return data


class _Lenient(_ValidUnicode):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Lenient):
    include_usage: Bool = False


class ContentPart(BaseModel):
    # Extra keys allowed: a part is checked for its type when the prompt is built,
    # so that an image part gets a clear "not supported" rather than a schema error.
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    # Extra keys (name, tool_calls, tool_call_id, ...) are kept: chat templates use them.
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    # DeepSeek prefix completion: the last assistant message is continued.
    prefix: Bool = False
    # DeepSeek: a prefix message may carry reasoning to continue, too.
    reasoning_content: str | None = None


class SamplingFields(_ValidUnicode):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model_config = ConfigDict(extra="allow")  # named in a 400 by sampling.check_fields

    model: str | None = None
    temperature: Num | None = None
    top_p: Num | None = None
    top_k: Int | None = None
    min_p: Num | None = None
    n: Int = Field(1, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: Int | None = None
    presence_penalty: Num | None = None
    frequency_penalty: Num | None = None
    repetition_penalty: Num | None = None
    stream: Bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: Bool = False
    user: str | None = None
    # vLLM extensions.
    min_tokens: Int = 0
    stop_token_ids: list[Int] | None = None
    include_stop_str_in_output: Bool = False
    skip_special_tokens: Bool = True
    # OpenAI: token id (as a string) -> bias in [-100, 100] added to its logit.
    logit_bias: dict[str, Num] | None = None
    # Constrained output (server/structured_request.py checks the shapes, naming the
    # field): OpenAI's response_format, vLLM's structured_outputs and guided_*.
    response_format: Any = None
    structured_outputs: Any = None
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Int | None = None
    max_completion_tokens: Int | None = None  # OpenAI's newer name; wins over max_tokens
    logprobs: Bool = False
    top_logprobs: Int | None = None
    # Caps the tokens spent inside <think>...</think>; the engine then closes the block.
    max_reasoning_tokens: Int | None = None
    # OpenAI's effort levels, mapped onto max_reasoning_tokens (sampling.REASONING_EFFORT).
    reasoning_effort: str | None = None
    # Function tools (server/tool_calls/plan.py checks them, naming the field); with
    # tool_choice "none" they still reach the chat template.
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    chat_template_kwargs: dict[str, Any] | None = None  # e.g. {"enable_thinking": false}


class CompletionRequest(SamplingFields):
    # A string, a batch of strings, token ids, or a batch of token ids.
    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None  # fill-in-the-middle, where the model has FIM tokens
    max_tokens: Int | None = 16  # OpenAI's default for completions
    logprobs: Int | None = None  # top-k alternatives per token (0..20)
    echo: Bool = False
    best_of: Int | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, v: Any) -> Any:
        # One clear message instead of one error per member of the union.
        def ids(x: Any) -> bool:
            return isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in x)

        ok = isinstance(v, str) or (isinstance(v, list) and (
            all(isinstance(x, str) for x in v) or ids(v) or all(ids(x) for x in v)))
        if not ok:
            raise ValueError("prompt must be a string, a list of strings, a list of token ids "
                             "(non-negative integers), or a list of lists of token ids")
        return v


class TokenizeRequest(_Lenient):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: Bool = True  # for a prompt: BOS as the model adds it
    add_generation_prompt: Bool = True  # for messages
    return_token_strs: Bool = False
    chat_template_kwargs: dict[str, Any] | None = None


class DetokenizeRequest(_Lenient):
    model: str | None = None
    tokens: list[Int]
    skip_special_tokens: Bool = False


# OpenAI chat fields that would change the output and that this server does not
# implement yet: field -> whether a value asks for nothing (given all the
# request's fields), and so may pass. Any other value is a 400 "<field> is not
# supported by this server yet". Implementing one means deleting its line.
UNSUPPORTED: dict[str, Callable[[Any, dict[str, Any]], bool]] = {
    "functions": lambda v, req: not v or req.get("function_call") == "none",
    "function_call": lambda v, req: v in (None, "none", "auto"),
    "audio": lambda v, req: v is None,
    "modalities": lambda v, req: v is None or v == ["text"],
    "prediction": lambda v, req: v is None,
    "web_search_options": lambda v, req: v is None,
    "verbosity": lambda v, req: v in (None, "medium"),
    "moderation": lambda v, req: v is None,
}

# OpenAI fields that label, store or route a request and change nothing in the
# output: accepted and not used (`user` is a declared field, also unused).
IGNORED: frozenset[str] = frozenset({
    "metadata", "store", "service_tier", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options",
    "safety_identifier",
})
