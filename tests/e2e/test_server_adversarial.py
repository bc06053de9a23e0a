"""Hostile and broken input against the session's real af3-serve: the heaviest and most
varied cases of tests/support/hostile_inputs.py (all of them run in-process in
tests/http/test_http_adversarial.py); then it must still answer as vLLM's offline engine
does, with its memory bounded."""

import re
from pathlib import Path

import httpx
import psutil
from vllm import SamplingParams

from tests.support.audio_files import as_sent, encode, make_clip
from tests.support.hostile_inputs import CASES, LENGTH_CASES, MODEL, OK_WAV, audio_body, b64
from tests.support.http_helpers import CHAT, assert_clean
from tests.support.oracles import chat_prompt
from tests.support.server import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}
# The session server's API process: a ceiling on its peak RSS across the whole suite.
PEAK_RSS_BOUND = 4 * 2**30

# The heaviest and most varied cases, for the real server: its memory, its decoder threads
# and its process log see them.
ON_THE_REAL_SERVER = [
    "malformed json",
    "deeply nested json",
    "lone surrogate in text",
    "garbage bytes",
    "truncated mp3",
    "nan samples",
    "header claims a huge data chunk",
    "header claims 64 channels",
    "11-minute audio",
    "hour of low-bitrate opus",
    "ten megabytes of text",
    "n of 1000",
    "ssrf loopback",
    "ssrf ipv4-mapped ipv6",
    "file symlink escaping",
    "body over the limit",
    "wrong api key",
    "speech garbage file",
    "speech file claiming 4 hours",
    *(c.name for c in LENGTH_CASES),
]


async def test_the_real_server_survives_hostile_input(
    server, media_dir: Path, llm, tiny_checkpoint: Path, speech
) -> None:
    """The heaviest cases against the session server: right statuses, clean errors, no key
    and no audio in its log; then it still answers as vLLM's offline engine does."""
    cases = [c for c in CASES if c.name in ON_THE_REAL_SERVER]
    assert len(cases) == len(ON_THE_REAL_SERVER)
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=120) as client:
        for case in cases:
            response = await case.send(client, media_dir)
            assert response.status_code in case.statuses, (case.name, response.text[:300])
            assert_clean(response)
            assert (await client.get("/health")).status_code == 200, case.name
        clip = speech[: 16000 * 5]
        question = "What is said in the audio?"
        body = {
            "model": MODEL,
            "max_tokens": 8,
            "temperature": 0,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "input_audio",
                            "input_audio": {"data": b64(encode(clip)), "format": "wav"},
                        },
                        {"type": "text", "text": question},
                    ],
                }
            ],
        }
        reply = await client.post(CHAT, json=body)
    assert reply.status_code == 200, reply.text
    (offline,) = llm.generate(
        {
            "prompt": chat_prompt(tiny_checkpoint, question),
            "multi_modal_data": {"audio": [(as_sent(clip), 16000)]},
        },
        SamplingParams(max_tokens=8, temperature=0),
    )
    assert reply.json()["choices"][0]["message"]["content"] == offline.outputs[0].text
    log = server.log_text()
    assert API_KEY not in log
    assert b64(OK_WAV)[:40] not in log and b64(encode(clip))[:40] not in log


def test_server_is_still_correct_and_memory_stayed_bounded(server, speech) -> None:
    clip = make_clip(speech, 30.0)
    body = audio_body(encode(clip), max_tokens=4, temperature=0)
    first = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=120)
    again = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=120)
    assert first.status_code == again.status_code == 200
    assert first.json()["choices"][0]["message"] == again.json()["choices"][0]["message"]
    assert first.json()["usage"]["prompt_tokens_details"]["audio_tokens"] == 750
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    peak_kib = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))
    print(
        f"af3-serve API process peak RSS: {peak_kib / 2**20:.2f} GiB; "
        f"now {psutil.Process(server.process.pid).memory_info().rss / 2**30:.2f} GiB"
    )
    assert peak_kib * 1024 < PEAK_RSS_BOUND
