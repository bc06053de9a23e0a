"""API keys, as FastAPI dependencies: the bearer key is checked and the client named."""

import hashlib
import hmac

from fastapi import Request
from starlette.requests import HTTPConnection

from af3_serve.edge.errors import APIError


def require_api_key(request: Request) -> None:
    """Checks the bearer key and names the client for per-client limits and logs: a short
    hash of its key (never the key), or its address when the server runs without keys."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    request.state.client = client_name(request, token if scheme.lower() == "bearer" else None)


def client_name(connection: HTTPConnection, token: str | None) -> str:
    """The client of a checked key `token` (None: no key given), for limits and logs; a 401
    when the server has keys and `token` is none of them."""
    keys = connection.app.state.runtime.config.api_keys
    if not keys:
        return f"addr:{connection.client.host if connection.client else '-'}"
    token = token or ""
    # Compare with every key, always: the time taken says nothing about which matched.
    matched = [hmac.compare_digest(token.encode(), key.encode()) for key in keys]
    if not any(matched):
        raise APIError(401, "Missing or invalid API key.", code="invalid_api_key")
    return "key:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def require_api_key_if_protected(request: Request) -> None:
    if request.app.state.runtime.config.protect_metrics:
        require_api_key(request)
