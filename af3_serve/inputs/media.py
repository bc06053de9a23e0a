"""Where a request's audio comes from: inline base64, `data:` URLs, allowlisted
http(s) hosts, or files under one allowed folder."""

import asyncio
import binascii
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx
import pybase64

from af3_serve.edge.errors import APIError
from af3_serve.protocol import AudioPart, InputAudioPart


@dataclass(frozen=True)
class MediaPolicy:
    max_bytes: int
    allowed_domains: frozenset[str]
    allowed_local_path: Path | None
    allow_private_addresses: bool = False
    fetch_timeout_s: float = 30.0


def b64decode(data: str, param: str) -> bytes:
    """Base64 audio, checked (a 400 naming `param` when it is not base64)."""
    # pybase64 (SIMD) checks and decodes a 25-MB body in ~1 ms; the standard library's
    # regex check and decoding take ~33 ms of the API process's one core.
    try:
        return pybase64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(
            400, "Audio data is not valid base64.", param=param, code="invalid_base64"
        ) from exc


def _too_big(policy: MediaPolicy, param: str) -> APIError:
    message = f"Audio file is larger than {policy.max_bytes} bytes."
    return APIError(413, message, param=param, code="audio_too_large")


async def load_audio_bytes(part: AudioPart, policy: MediaPolicy, param: str) -> bytes:
    if isinstance(part, InputAudioPart):
        return b64decode(part.input_audio.data, param)
    url = part.audio_url.url
    scheme = urlparse(url).scheme.lower()
    if scheme == "data":
        header, _, payload = url.partition(",")
        if ";base64" not in header:
            raise APIError(
                400, "Only base64 data: URLs are supported.", param=param, code="invalid_url"
            )
        return b64decode(payload, param)
    if scheme in {"http", "https"}:
        return await _fetch_http(url, policy, param)
    if scheme == "file":
        return _read_local(url, policy, param)
    raise APIError(
        400, f"Unsupported audio URL scheme '{scheme}'.", param=param, code="invalid_url"
    )


def forbidden_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, private, link-local, shared, multicast, reserved, unspecified: anything
    that is not a public unicast address (IPv4-mapped IPv6 judged as the IPv4 it maps)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


async def _pinned_address(host: str, port: int, policy: MediaPolicy, param: str) -> str:
    """Resolve once and connect to that address, so a second DNS answer (rebinding)
    cannot steer the fetch to an address that was never checked."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise APIError(
            400, f"Could not resolve '{host}'.", param=param, code="fetch_failed"
        ) from exc
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not policy.allow_private_addresses and any(map(forbidden_address, addresses)):
        raise APIError(
            400,
            f"'{host}' resolves to an address audio may not be fetched from.",
            param=param,
            code="address_not_allowed",
        )
    return str(addresses[0])


async def _fetch_http(url: str, policy: MediaPolicy, param: str) -> bytes:
    parts = urlparse(url)
    host = (parts.hostname or "").lower()
    if parts.username is not None or parts.password is not None:
        raise APIError(
            400, "Audio URLs may not carry credentials.", param=param, code="invalid_url"
        )
    if host not in policy.allowed_domains:
        raise APIError(
            400,
            f"Fetching audio from '{host}' is not allowed on this server.",
            param=param,
            code="domain_not_allowed",
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise APIError(
            400, "Invalid port in the audio URL.", param=param, code="invalid_url"
        ) from exc
    address = await _pinned_address(host, port, policy, param)
    literal = f"[{address}]" if ":" in address else address
    pinned_url = parts._replace(netloc=f"{literal}:{port}").geturl()
    headers = {"Host": parts.netloc}
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    timeout = httpx.Timeout(policy.fetch_timeout_s)
    try:
        # No redirects: a redirect could lead anywhere, past the allowlist.
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            request = client.build_request(
                "GET", pinned_url, headers=headers, extensions=extensions
            )
            response = await client.send(request, stream=True)
            try:
                if response.status_code != 200:
                    raise APIError(
                        400,
                        f"Fetching the audio URL gave HTTP {response.status_code} "
                        "(redirects are not followed).",
                        param=param,
                        code="fetch_failed",
                    )
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > policy.max_bytes:
                        raise _too_big(policy, param)
                    chunks.append(chunk)
                return b"".join(chunks)
            finally:
                await response.aclose()
    except httpx.HTTPError as exc:
        raise APIError(
            400, "Could not fetch the audio URL.", param=param, code="fetch_failed"
        ) from exc


def _read_local(url: str, policy: MediaPolicy, param: str) -> bytes:
    if policy.allowed_local_path is None:
        raise APIError(
            400,
            "file:// audio URLs are not allowed on this server.",
            param=param,
            code="local_file_not_allowed",
        )
    root = policy.allowed_local_path.resolve()
    path = Path(unquote(urlparse(url).path)).resolve()  # follows symlinks and '..'
    if not path.is_relative_to(root) or not path.is_file():
        raise APIError(
            400,
            "The audio file is not under the allowed folder or does not exist.",
            param=param,
            code="local_file_not_allowed",
        )
    if path.stat().st_size > policy.max_bytes:
        raise _too_big(policy, param)
    return path.read_bytes()
