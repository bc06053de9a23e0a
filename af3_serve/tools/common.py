"""What af3-infer and af3-eval share: audio parts, common flags."""

import argparse
import base64
import os
import uuid
from pathlib import Path

import httpx

# The header that names a conversation for a session-affinity load balancer (vLLM's router
# with policy sticky_least_loaded or consistent_hash): every turn of one conversation
# carries the same value, so its later turns reach the replica that has its audio cached.
SESSION_HEADER = "X-Session-ID"


def session_headers() -> dict[str, str]:
    """A new conversation's header, for the openai client's `extra_headers`."""
    return {SESSION_HEADER: uuid.uuid4().hex}


def audio_part(path: Path) -> dict:
    """An OpenAI `input_audio` part; the server sniffs the real format from the bytes."""
    data = base64.b64encode(path.read_bytes()).decode()
    fmt = path.suffix.lstrip(".").lower() or "wav"
    return {"type": "input_audio", "input_audio": {"data": data, "format": fmt}}


def base_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


def served_model(url: str, key: str | None) -> str:
    """The base model a server answers to (the first of its /v1/models), for clients not
    given --model: af3-serve names it after its checkpoint, vLLM after --model."""
    models = f"{base_url(url)}/models"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(models, headers=headers, timeout=30.0)
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
    except httpx.HTTPStatusError as exc:  # the server's own message, e.g. a wrong key
        why = f"HTTP {exc.response.status_code}: {exc.response.text[:300]}"
    except (httpx.HTTPError, ValueError, LookupError, TypeError) as exc:
        why = str(exc)
    raise RuntimeError(f"cannot read the served model from {models}: {why}")


def add_api_key_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api-key", default=None, help="bearer key (default: first of AF3_API_KEY)")


def api_key(given: str | None) -> str:
    # The openai client refuses an empty key; servers without keys ignore whatever is sent.
    env = os.environ.get("AF3_API_KEY", "").split(",")[0].strip()
    return given or env or "none"


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--think",
        action="store_true",
        help="AF3's thinking mode: its LoRA adapter and its sentence after the question",
    )


def sampling_body(args: argparse.Namespace) -> dict:
    """Chat-completions parameters from the sampling flags."""
    body = {"temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_tokens}
    return body if args.seed is None else {**body, "seed": args.seed}


def thinking_body(args: argparse.Namespace) -> dict:
    """af3-serve's `thinking` field, for the openai client: the server then uses its
    thinking adapter and appends AF3's sentence itself."""
    return {"extra_body": {"thinking": True}} if args.think else {}
