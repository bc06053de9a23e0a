"""Hostile and broken input, as cases: each sends one request (to af3-serve in-process in
tests/http/test_http_adversarial.py, to a real one in tests/e2e/test_server_adversarial.py)
and names the statuses it may get."""

import base64
import io
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from af3_model_executor.audio_spec import AudioSpec
from tests.support.audio_files import encode
from tests.support.audio_lengths import random_lengths
from tests.support.http_helpers import CHAT, TRANSCRIPTIONS
from tests.support.paths import CACHE
from tests.support.server import API_KEY

MODEL = "audio-flamingo-3"
# The largest body accepted, as the servers the cases run against are configured (the e2e
# session server: tests/e2e/conftest.py).
MAX_BODY = 48 * 2**20


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wav_bytes(samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def audio_body(data: bytes, fmt: str = "wav", **extra) -> dict:
    part = {"type": "input_audio", "input_audio": {"data": b64(data), "format": fmt}}
    return {
        "model": MODEL,
        "max_tokens": 2,
        "messages": [{"role": "user", "content": [part]}],
        **extra,
    }


def user_body(content: object) -> dict:
    """A request whose single user message carries `content` as given."""
    return {"model": MODEL, "messages": [{"role": "user", "content": content}]}


def url_body(url: str) -> dict:
    part = {"type": "audio_url", "audio_url": {"url": url}}
    return {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": [part]}]}


def forged_wav(rate: int = 16000, channels: int = 1, data_size: int = 32) -> bytes:
    """A PCM WAV header that says what we like, followed by 32 bytes of samples."""
    header = b"RIFF" + struct.pack("<I", 36 + data_size) + b"WAVEfmt "
    header += struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16)
    return header + b"data" + struct.pack("<I", data_size) + bytes(32)


def long_opus(seconds: int) -> bytes:
    """A low-bitrate Opus file: small on the wire, hours of PCM once decoded. Encoding an
    hour takes libopus ~20 s, so the file is kept in the test cache."""
    path = CACHE / "adversarial" / f"silence-{seconds}s.opus"
    if not path.exists():
        buffer = io.BytesIO()
        silence = np.zeros(seconds * 16000, np.float32)
        sf.write(buffer, silence, 16000, format="OGG", subtype="OPUS")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_bytes(buffer.getvalue())
        path.with_suffix(".tmp").rename(path)
    return path.read_bytes()


# (a client authenticated with the test key, the server's media folder) -> its response
Send = Callable[[httpx.AsyncClient, Path], Awaitable[httpx.Response]]


@dataclass(frozen=True)
class Case:
    name: str
    statuses: tuple[int, ...]
    send: Send


def chat(body: dict | bytes | str | Callable[[], dict], headers: dict | None = None) -> Send:
    """`body` as JSON, or sent as it is; a callable makes it when the case runs."""

    async def send(client: httpx.AsyncClient, _: Path) -> httpx.Response:
        if callable(body):
            return await client.post(CHAT, json=body(), headers=headers or {})
        if isinstance(body, dict):
            return await client.post(CHAT, json=body, headers=headers or {})
        content = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        h = {**(headers or {}), "content-type": "application/json"}
        return await client.post(CHAT, content=content, headers=h)

    return send


def speech(data: dict, file: bytes | None, headers: dict | None = None) -> Send:
    async def send(client: httpx.AsyncClient, _: Path) -> httpx.Response:
        files = {"file": ("a.wav", file)} if file is not None else None
        return await client.post(TRANSCRIPTIONS, data=data, files=files, headers=headers or {})

    return send


def local_file(name: str, make: Callable[[Path], str]) -> Send:
    async def send(client: httpx.AsyncClient, media: Path) -> httpx.Response:
        return await chat(url_body(make(media)))(client, media)

    return send


def _symlink_out(media: Path) -> str:
    link = media / "escape.wav"
    if not link.exists():
        link.symlink_to("/etc/passwd")
    return link.as_uri()


def flac_claiming(hours: float) -> bytes:
    """One second of FLAC whose header says it lasts `hours` (past the transcription limit)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(16000, np.float32), 16000, format="FLAC")
    data = bytearray(buffer.getvalue())
    at = 8 + 10  # "fLaC", the block header, then STREAMINFO's rate, channels, bits, length
    fields = int.from_bytes(data[at : at + 8], "big") & ~(2**36 - 1)
    data[at : at + 8] = (fields | int(hours * 3600 * 16000)).to_bytes(8, "big")
    return bytes(data)


def tone(num_samples: int) -> np.ndarray:
    return np.sin(np.linspace(0, num_samples / 8, num_samples)).astype(np.float32) * 0.3


SPEECH_OK = np.sin(np.linspace(0, 2000, 16000)).astype(np.float32) * 0.3
OK_WAV = wav_bytes(SPEECH_OK)
GOOD = audio_body(OK_WAV)

CASES = [
    Case("malformed json", (400,), chat("{")),
    Case("json array", (400,), chat("[]")),
    Case("json null", (400,), chat("null")),
    Case("empty body", (400,), chat(b"")),
    Case("deeply nested json", (400,), chat("[" * 100000 + "]" * 100000)),
    Case(
        "lone surrogate in text",
        (200, 400),
        chat(
            '{"model": "' + MODEL + '", "max_tokens": 2, '
            '"messages": [{"role": "user", "content": "\\ud800"}]}'
        ),
    ),
    Case("messages missing", (400,), chat({"model": MODEL})),
    Case("messages empty", (400,), chat({"model": MODEL, "messages": []})),
    Case("messages a string", (400,), chat({"model": MODEL, "messages": "hi"})),
    Case(
        "unknown role",
        (400,),
        chat({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}),
    ),
    Case(
        "content an int",
        (400,),
        chat(user_body(5)),
    ),
    Case(
        "image part",
        (400,),
        chat(
            user_body(
                [
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,AAAA"},
                    }
                ]
            )
        ),
    ),
    Case(
        "audio without data",
        (400,),
        chat(user_body([{"type": "input_audio", "input_audio": {"format": "wav"}}])),
    ),
    Case(
        "audio data an int",
        (400,),
        chat(user_body([{"type": "input_audio", "input_audio": {"data": 7, "format": "wav"}}])),
    ),
    Case(
        "invalid base64",
        (400,),
        chat(user_body([{"type": "input_audio", "input_audio": {"data": "!!!", "format": "wav"}}])),
    ),
    Case("garbage bytes", (400,), chat(audio_body(bytes(range(256)) * 64))),
    Case("truncated wav", (400,), chat(audio_body(OK_WAV[:30]))),
    Case("truncated flac", (200, 400), chat(audio_body(encode(SPEECH_OK, "flac")[:2000], "flac"))),
    Case("truncated mp3", (200, 400), chat(audio_body(encode(SPEECH_OK, "mp3")[:600], "mp3"))),
    Case("truncated ogg", (200, 400), chat(audio_body(encode(SPEECH_OK, "ogg")[:500], "ogg"))),
    Case("flac header only", (400,), chat(audio_body(encode(SPEECH_OK, "flac")[:42], "flac"))),
    Case("zero samples", (400,), chat(audio_body(wav_bytes(np.zeros(0, np.float32))))),
    Case(
        "nan samples",
        (400,),
        chat(audio_body(wav_bytes(np.full(16000, np.nan, np.float32), subtype="FLOAT"))),
    ),
    Case(
        "inf samples",
        (400,),
        chat(audio_body(wav_bytes(np.full(16000, np.inf, np.float32), subtype="FLOAT"))),
    ),
    Case("shorter than one token", (400,), chat(audio_body(wav_bytes(SPEECH_OK[:100])))),
    Case("11-minute audio", (413,), chat(audio_body(wav_bytes(np.zeros(16000 * 660, np.float32))))),
    Case(
        "header claims a huge data chunk",
        (200, 400),
        chat(audio_body(forged_wav(data_size=0xFFFFFF00))),
    ),
    Case("header claims 655350 Hz", (400,), chat(audio_body(forged_wav(rate=655350)))),
    Case("header claims 64 channels", (400,), chat(audio_body(forged_wav(channels=64)))),
    Case("header claims 0 Hz", (400,), chat(audio_body(forged_wav(rate=0)))),
    Case("hour of low-bitrate opus", (413,), chat(lambda: audio_body(long_opus(3600), "ogg"))),
    Case(
        "nine audios",
        (400,),
        chat(
            user_body(
                [
                    {
                        "type": "input_audio",
                        "input_audio": {"data": b64(OK_WAV), "format": "wav"},
                    }
                ]
                * 9
            )
        ),
    ),
    Case(
        "ten megabytes of text",
        (400,),
        chat(user_body("word " * 2_000_000)),
    ),
    Case("temperature a string", (400,), chat({**GOOD, "temperature": "hot"})),
    Case("negative max_tokens", (400,), chat({**GOOD, "max_tokens": -1})),
    Case("zero max_tokens", (400,), chat({**GOOD, "max_tokens": 0})),
    Case("n of 1000", (400,), chat({**GOOD, "n": 1000})),
    Case("top_logprobs of 50", (400,), chat({**GOOD, "logprobs": True, "top_logprobs": 50})),
    Case("tools", (400,), chat({**GOOD, "tools": [{"type": "function"}]})),
    Case("response_format", (400,), chat({**GOOD, "response_format": {"type": "json_schema"}})),
    Case("stream_options without stream", (400,), chat({**GOOD, "stream_options": {}})),
    Case("unknown model", (404,), chat({**GOOD, "model": "gpt-4o"})),
    Case("missing model", (400,), chat({k: v for k, v in GOOD.items() if k != "model"})),
    Case("ssrf loopback", (400,), chat(url_body("http://127.0.0.1:9/a.wav"))),
    Case("ssrf localhost", (400,), chat(url_body("http://localhost:9/a.wav"))),
    Case("ssrf ipv6 loopback", (400,), chat(url_body("http://[::1]:9/a.wav"))),
    Case("ssrf cloud metadata", (400,), chat(url_body("http://169.254.169.254/latest/meta-data"))),
    Case("ssrf hex address", (400,), chat(url_body("http://0x7f000001:9/a.wav"))),
    Case("ssrf decimal address", (400,), chat(url_body("http://2130706433:9/a.wav"))),
    Case("ssrf octal address", (400,), chat(url_body("http://017700000001:9/a.wav"))),
    Case("ssrf ipv4-mapped ipv6", (400,), chat(url_body("http://[::ffff:127.0.0.1]:9/a.wav"))),
    Case("ssrf https loopback", (400,), chat(url_body("https://127.0.0.1:9/a.wav"))),
    Case("host not allowlisted", (400,), chat(url_body("http://example.com/a.wav"))),
    Case("credentials in url", (400,), chat(url_body("http://user:pw@127.0.0.1:9/a.wav"))),
    Case("gopher url", (400,), chat(url_body("gopher://127.0.0.1:70/_x"))),
    Case("data url not base64", (400,), chat(url_body("data:audio/wav,RIFF"))),
    Case("file outside the folder", (400,), chat(url_body("file:///etc/passwd"))),
    Case(
        "file path traversal",
        (400,),
        local_file(
            "traversal",
            lambda m: (
                (m / ".." / ".." / "etc" / "passwd").as_uri().replace(str(m.resolve()), str(m))
            ),
        ),
    ),
    Case("file symlink escaping", (400,), local_file("symlink", _symlink_out)),
    Case("body over the limit", (413,), chat({**GOOD, "user": "x" * (48 * 2**20)})),
    Case("wrong api key", (401,), chat(GOOD, {"Authorization": "Bearer wrong"})),
    Case("missing api key", (401,), chat(GOOD, {"Authorization": ""})),
    Case("basic auth scheme", (401,), chat(GOOD, {"Authorization": f"Basic {API_KEY}"})),
    Case("speech without file", (400,), speech({"model": MODEL}, None)),
    Case("speech empty file", (400,), speech({"model": MODEL}, b"")),
    Case("speech garbage file", (400,), speech({"model": MODEL}, b"\x00\x01" * 5000)),
    Case("speech file claiming 4 hours", (413,), speech({"model": MODEL}, flac_claiming(4))),
    Case(
        "speech bad response_format",
        (400,),
        speech({"model": MODEL, "response_format": "docx"}, OK_WAV),
    ),
    Case("speech bad language", (400,), speech({"model": MODEL, "language": "xx"}, OK_WAV)),
    Case("speech temperature 5", (400,), speech({"model": MODEL, "temperature": "5"}, OK_WAV)),
    Case("speech unknown model", (404,), speech({"model": "whisper-1"}, OK_WAV)),
    Case("speech without model", (400,), speech({}, OK_WAV)),
    Case(
        "speech wrong api key",
        (401,),
        speech({"model": MODEL}, OK_WAV, {"Authorization": "Bearer nope"}),
    ),
]

# A load test's clips: random lengths up to three windows, half of them a few samples past a
# 30-s boundary (a last window that yields no audio token, or one). Every one is served, the
# transcription too (its last window 30.005 s long).
RANDOM_LENGTHS = random_lengths(AudioSpec(), 6, seed=21, max_windows=3)
LENGTH_CASES = [
    Case(f"random length {n} samples", (200,), chat(audio_body(wav_bytes(tone(n)))))
    for n in RANDOM_LENGTHS
] + [
    Case(
        "speech 60 s and 80 samples",
        (200,),
        speech({"model": MODEL}, wav_bytes(tone(2 * 30 * 16000 + 80))),
    )
]
CASES += LENGTH_CASES
