"""FastAPI dependencies: the process's runtime and API-key checks."""

import hmac

from fastapi import Request

from af3_serve.errors import APIError
from af3_serve.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def require_api_key(request: Request) -> None:
    keys = request.app.state.runtime.config.api_keys
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # Compare with every key, always: the time taken says nothing about which matched.
    matched = [hmac.compare_digest(token.encode(), key.encode()) for key in keys]
    if scheme.lower() != "bearer" or not any(matched):
        raise APIError(401, "Missing or invalid API key.", code="invalid_api_key")
