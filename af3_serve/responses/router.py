"""POST /v1/responses (and GET/DELETE /v1/responses/{id}): OpenAI's Responses API answered
by the chat endpoint's serving path, with its admission, limits and metrics."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from af3_serve.chat.serving import prepare_chat
from af3_serve.chat.setup import ChatSetup, get_chat_setup
from af3_serve.edge.auth import require_api_key
from af3_serve.edge.errors import APIError
from af3_serve.responses.protocol import Response, ResponsesRequest
from af3_serve.responses.serving import ResponseAnswer, chat_request, to_messages
from af3_serve.responses.store import ResponseStore
from af3_serve.runtime import Runtime, get_runtime

router = APIRouter(dependencies=[Depends(require_api_key)])


def get_store(request: Request) -> ResponseStore:
    return request.app.state.responses


def _refuse_unserved(body: ResponsesRequest) -> None:
    if body.include:
        raise APIError(
            400, "include is not served: there is nothing more to include.", param="include"
        )


@router.post("/v1/responses", response_model=None)
async def create_response(
    body: ResponsesRequest,
    request: Request,
    runtime: Annotated[Runtime, Depends(get_runtime)],
    store: Annotated[ResponseStore, Depends(get_store)],
    setup: Annotated[ChatSetup, Depends(get_chat_setup)],
) -> Response | StreamingResponse:
    _refuse_unserved(body)
    history = []
    if body.previous_response_id is not None:
        previous = store.get(body.previous_response_id)
        if previous is None:
            raise APIError(
                400,
                f"Previous response with id '{body.previous_response_id}' not found (not "
                "stored, deleted, or dropped from this server's store).",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        history = previous.history
    turn, audio_params = to_messages(body, history)
    chat = chat_request(body, history + turn)
    try:
        answer = await prepare_chat(chat, request, runtime, setup, "responses", audio_params)
    except APIError as exc:
        # Named as this request names them: a whole-conversation problem is its input's.
        exc.param = {"messages": "input", "response_format": "text.format"}.get(
            exc.param, exc.param
        )
        raise
    response = ResponseAnswer(body)

    def keep(done: Response) -> None:
        if body.store:
            done.store = store.put(done, [*history, *turn, response.said])

    if body.stream:
        return answer.served.stream(response.events(answer.chunk_models(), keep), done=False)
    done = response.from_completion(await answer.served.answer(answer.completion()))
    keep(done)
    return done


@router.get("/v1/responses/{response_id}")
async def get_response(
    response_id: str, store: Annotated[ResponseStore, Depends(get_store)]
) -> Response:
    stored = store.get(response_id)
    if stored is None:
        raise APIError(404, f"No response with id '{response_id}'.", code="response_not_found")
    return stored.response


@router.delete("/v1/responses/{response_id}")
async def delete_response(
    response_id: str, store: Annotated[ResponseStore, Depends(get_store)]
) -> dict:
    if not store.delete(response_id):
        raise APIError(404, f"No response with id '{response_id}'.", code="response_not_found")
    return {"id": response_id, "object": "response.deleted", "deleted": True}
