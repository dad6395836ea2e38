"""GET /health, /metrics and /v1/models."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from jevons.server.errors import APIError
from jevons.server.responses import ErrorResponse, HealthResponse, ModelCard, ModelList
from jevons.server.routes_common import server_state

router = APIRouter()


@router.get(
    "/health",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "Loading, draining, or the engine failed"}},
    tags=["Operations"],
)
async def health(request: Request) -> JSONResponse:
    code, status, detail = server_state(request).health()
    return JSONResponse(HealthResponse(status=status, detail=detail).model_dump(), status_code=code)  # type: ignore[arg-type]


@router.get("/metrics", response_class=Response, tags=["Operations"],
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
async def metrics(request: Request) -> Response:
    return Response(server_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _cards(request: Request) -> list[ModelCard]:
    state = server_state(request)
    eng = state.require_engine()
    # The model's own name (a folder's or file's name, or the alias), never the
    # --model path: a key holder has no business knowing the server's file system.
    root = eng.core.model_name
    return [ModelCard(id=name, created=state.created, root=root, max_model_len=eng.core.max_model_len)
            for name in state.served_names]


@router.get("/v1/models", response_model=ModelList, tags=["OpenAI"], responses={503: {"model": ErrorResponse}})
async def list_models(request: Request) -> ModelList:
    return ModelList(data=_cards(request))


@router.get("/v1/models/{model:path}", response_model=ModelCard, tags=["OpenAI"],
            responses={404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
async def get_model(model: str, request: Request) -> ModelCard:
    for card in _cards(request):
        if card.id == model:
            return card
    raise APIError(404, f"the model {model!r} does not exist", param="model", code="model_not_found")
