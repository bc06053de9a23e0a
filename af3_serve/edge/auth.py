"""API keys, as FastAPI dependencies: the bearer key is checked and the client named."""

import hashlib
import hmac

from fastapi import Request

from af3_serve.edge.errors import APIError


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
