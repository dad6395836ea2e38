"""POST /tokenize and /detokenize (vLLM's shapes): count a prompt's tokens,
or a conversation's after the chat template, without generating."""
from __future__ import annotations

from fastapi import APIRouter, Request

from jevons.server.chat_prompt import render_chat_prompt
from jevons.server.errors import APIError
from jevons.server.prompt_limits import off_loop
from jevons.server.protocol import DetokenizeRequest, TokenizeRequest
from jevons.server.responses import DetokenizeResponse, TokenizeResponse
from jevons.server.routes_common import ERROR_RESPONSES, server_state

router = APIRouter(tags=["Tokenizer"])


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES)
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    state = server_state(request)
    core = state.require_engine(body.model).core
    tok = core.tokenizer
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "send exactly one of prompt or messages", param="prompt")
    if body.messages is not None and not body.messages:
        raise APIError(400, "messages must not be empty", param="messages")
    ids = await off_loop(_ids, tok, body)  # the template and the tokenizer, off the event loop
    strs = [tok.id_to_token(i) for i in ids] if body.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=core.max_model_len, tokens=ids, token_strs=strs)


def _ids(tok, body: TokenizeRequest) -> list[int]:
    if body.messages is not None:
        text = render_chat_prompt(tok, body.messages, None, body.chat_template_kwargs, body.add_generation_prompt)
        return tok.encode(text, add_special_tokens=False)
    return tok.encode(body.prompt, add_special_tokens=body.add_special_tokens)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES)
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    state = server_state(request)
    core = state.require_engine(body.model).core
    vocab = core.model_config.vocab_size
    bad = [t for t in body.tokens if not 0 <= t < vocab]
    if bad:
        raise APIError(400, f"token id {bad[0]} is outside the vocabulary [0, {vocab})", param="tokens")
    return DetokenizeResponse(prompt=core.tokenizer.decode(body.tokens, skip_special_tokens=body.skip_special_tokens))
