"""The engine's tokenizer: a `tokenizers.Tokenizer` plus the facts around it
(BOS/EOS policy, end-of-turn ids, chat template) that live in other files.

BOS/EOS are added here, not by the backend's post-processor, so the policy is
one explicit flag whatever the source (GGUF metadata, tokenizer_config.json or
the post-processor in tokenizer.json).
"""
from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer

from jevons.loader.chat_template import render_chat_template
from jevons.loader.token_bytes import token_bytes_reader

# Tokens chat formats end a turn with. When a model has one of these as a
# special token, generation stops on it as on EOS (llama.cpp does the same).
END_OF_TURN_TOKENS: frozenset[str] = frozenset(
    {
        "<|im_end|>",  # ChatML: Qwen, SmolLM
        "<|eot_id|>",  # Llama 3
        "<|eom_id|>",  # Llama 3 tool calls
        "<|end_of_text|>",
        "<|endoftext|>",
        "<｜end▁of▁sentence｜>",  # DeepSeek (full-width bars)
        "<|end|>",  # Phi-3
        "<end_of_turn>",  # Gemma
        "<|return|>",
        "<EOT>",
    }
)


class Tokenizer:
    def __init__(
        self,
        backend: BackendTokenizer,
        *,
        bos_token_id: int | None,
        eos_token_id: int | None,
        add_bos: bool,
        add_eos: bool = False,
        extra_eos_ids: Iterable[int] = (),
        pad_token_id: int | None = None,
        unk_token_id: int | None = None,
        chat_template: str | None = None,
        name: str = "",
        longest_piece: int | None = None,
    ) -> None:
        self.backend = backend
        self.name = name
        # The longest vocabulary piece in characters, where the loader knows it
        # without reading the vocabulary back (server/prompt_limits.py's bound).
        self.longest_piece = longest_piece
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.unk_token_id = unk_token_id
        self.add_bos = add_bos and bos_token_id is not None
        self.add_eos = add_eos and eos_token_id is not None
        self.chat_template = chat_template
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)

        added = backend.get_added_tokens_decoder()
        special = {i for i, tok in added.items() if tok.special}
        special |= {i for i in (bos_token_id, eos_token_id, pad_token_id, unk_token_id) if i is not None}
        self.special_token_ids: frozenset[int] = frozenset(special)

        eos = set(extra_eos_ids)
        if eos_token_id is not None:
            eos.add(eos_token_id)
        eos |= {i for i, tok in added.items() if tok.special and tok.content in END_OF_TURN_TOKENS}
        self.eos_token_ids: frozenset[int] = frozenset(eos)

    # ---- ids <-> text -------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`. Special tokens written in the text (e.g. from a
        chat template) always become their single ids; `add_special_tokens`
        only controls the BOS/EOS this model adds around plain text. Encode a
        rendered chat template with add_special_tokens=False when the template
        writes BOS itself.

        Through encode_batch, which lets go of the GIL while it works (encode
        holds it throughout): tokenizing a long prompt in a worker thread then
        leaves the server's event loop running."""
        ids = self.backend.encode_batch([text], add_special_tokens=False)[0].ids
        if add_special_tokens:
            if self.add_bos:
                ids = [self.bos_token_id, *ids]  # type: ignore[list-item]
            if self.add_eos:
                ids = [*ids, self.eos_token_id]  # type: ignore[list-item]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(i)

    @functools.cached_property
    def _bytes_reader(self) -> Callable[[int], bytes]:
        # Built on first use: it reads the whole tokenizer JSON once.
        return token_bytes_reader(self.backend, lambda t: self.decode([t], skip_special_tokens=False))

    def token_bytes(self, i: int) -> bytes:
        """The raw bytes token i stands for (a part of a UTF-8 character
        included), as OpenAI's logprobs `bytes`; see loader/token_bytes.py."""
        return self._bytes_reader(i)

    def token_text(self, i: int | None) -> str | None:
        return None if i is None else self.backend.id_to_token(i)

    @property
    def bos_token(self) -> str | None:
        return self.token_text(self.bos_token_id)

    @property
    def eos_token(self) -> str | None:
        return self.token_text(self.eos_token_id)

    # ---- chat ---------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[Any] | None = None,
        **kwargs: Any,
    ) -> str:
        """The prompt string for `messages`, as transformers' apply_chat_template
        (tokenize=False) renders it. A `chat_template=` kwarg overrides the model's."""
        template = kwargs.pop("chat_template", None) or self.chat_template
        if template is None:
            raise ValueError(
                f"model {self.name or '(unnamed)'} has no chat template, so chat messages cannot be "
                f"turned into a prompt; use the completions API with a raw prompt, or pass chat_template="
            )
        # Tokens the model lacks are left undefined (render as ""), as in transformers.
        tokens = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "unk_token": self.token_text(self.unk_token_id),
            "pad_token": self.token_text(self.pad_token_id),
        }
        special = {key: value for key, value in tokens.items() if value is not None}
        return render_chat_template(
            template, messages, add_generation_prompt=add_generation_prompt, tools=tools,
            special_tokens=special, **kwargs,
        )


# ---- Hugging Face folders ---------------------------------------------------


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _token_content(value: Any) -> str | None:
    # tokenizer_config stores special tokens as strings or AddedToken dicts.
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _pick_chat_template(folder: pathlib.Path, tc: dict[str, Any]) -> str | None:
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = tc.get("chat_template")
    if isinstance(template, list):
        # A list of named templates (e.g. "default", "tool_use"): use "default".
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        return named.get("default") or next(iter(named.values()), None)
    return template


def _post_processor_adds(backend: BackendTokenizer, token_id: int | None, at_start: bool) -> bool:
    """Whether tokenizer.json's post-processor puts `token_id` around plain text."""
    if token_id is None:
        return False
    with_special = backend.encode("a", add_special_tokens=True).ids
    plain = backend.encode("a", add_special_tokens=False).ids
    if len(with_special) <= len(plain):
        return False
    return (with_special[0] if at_start else with_special[-1]) == token_id


def load_hf_tokenizer(folder: pathlib.Path, name: str = "") -> Tokenizer:
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no tokenizer.json; jevons reads fast-tokenizer files only "
            f"(convert a sentencepiece tokenizer.model with transformers and save_pretrained)"
        )
    backend = BackendTokenizer.from_file(str(path))
    tc = _read_json(folder / "tokenizer_config.json")
    config = _read_json(folder / "config.json")
    generation = _read_json(folder / "generation_config.json")

    def special_id(key: str) -> int | None:
        # tokenizer_config wins, even when it says null (Qwen2 has no BOS although
        # its config.json names one); otherwise fall back to the model configs.
        if f"{key}_token" in tc:
            content = _token_content(tc[f"{key}_token"])
            return backend.token_to_id(content) if content is not None else None
        fallback = _ids(generation.get(f"{key}_token_id")) or _ids(config.get(f"{key}_token_id"))
        return fallback[0] if fallback else None

    bos, eos = special_id("bos"), special_id("eos")
    add_bos = tc.get("add_bos_token")
    add_eos = tc.get("add_eos_token")
    return Tokenizer(
        backend,
        bos_token_id=bos,
        eos_token_id=eos,
        add_bos=_post_processor_adds(backend, bos, True) if add_bos is None else bool(add_bos),
        add_eos=_post_processor_adds(backend, eos, False) if add_eos is None else bool(add_eos),
        extra_eos_ids=_ids(generation.get("eos_token_id")) + _ids(config.get("eos_token_id")),
        pad_token_id=special_id("pad"),
        unk_token_id=special_id("unk"),
        chat_template=_pick_chat_template(folder, tc),
        name=name,
    )

