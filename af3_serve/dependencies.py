"""FastAPI dependencies: the process's runtime, API-key checks, the chat request body."""

import hashlib
import hmac

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from af3_serve.errors import APIError
from af3_serve.protocol import ChatCompletionRequest
from af3_serve.runtime import Runtime

# The chat body's schema for the OpenAPI page, as the body is parsed by hand below.
CHAT_REQUEST_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ChatCompletionRequest.model_json_schema()}},
    }
}


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def require_api_key(request: Request) -> None:
    """Checks the bearer key and names the client for per-client limits and logs: a short
    hash of its key (never the key), or its address when the server runs without keys."""
    keys = request.app.state.runtime.config.api_keys
    if not keys:
        request.state.client = f"addr:{request.client.host if request.client else '-'}"
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # Compare with every key, always: the time taken says nothing about which matched.
    matched = [hmac.compare_digest(token.encode(), key.encode()) for key in keys]
    if scheme.lower() != "bearer" or not any(matched):
        raise APIError(401, "Missing or invalid API key.", code="invalid_api_key")
    request.state.client = "key:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def require_api_key_if_protected(request: Request) -> None:
    if request.app.state.runtime.config.protect_metrics:
        require_api_key(request)


async def chat_request_body(request: Request) -> ChatCompletionRequest:
    """The body, parsed by pydantic straight from bytes: its Rust JSON parser takes a fraction
    of the API-process CPU that json.loads plus validation spend on a 25-MB audio body.
    Runs after the key check, so a request without a valid key is never parsed."""
    try:
        return ChatCompletionRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc
