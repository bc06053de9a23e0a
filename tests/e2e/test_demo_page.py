"""The demo page at `/` in headless Chromium, on the session server (its routes:
tests/http/test_http_demo_page.py)."""

import base64
import json
import os
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.support.paths import ROOT
from tests.support.server import API_KEY

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # A generated tone as the microphone, allowed without asking: the recorder runs.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import expect, sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium")
    # The engine answers on a 2-core CPU shared with the test run: seconds, not milliseconds.
    expect.set_options(timeout=60_000)
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def browser(playwright):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


def test_upload_ask_stream_and_follow_up_in_chromium(browser, server, espeak_wav) -> None:
    from playwright.sync_api import expect

    # Under the page's own Content-Security-Policy (no bypass): what users get.
    page = browser.new_page(viewport={"width": 900, "height": 640})
    sent: list[dict] = []
    sessions: list[str | None] = []  # X-Session-ID of each chat request

    def record(request) -> None:
        if request.url.endswith("/v1/chat/completions"):
            sent.append(request.post_data_json)
            sessions.append(request.headers.get("x-session-id"))

    page.on("request", record)
    page.goto(f"{server.url}/")
    expect(page.locator("#error")).to_contain_text("API key")  # this server needs one
    page.fill("#api-key", API_KEY)
    page.locator("#api-key").dispatch_event("change")
    expect(page.locator("#model")).to_have_text("audio-flamingo-3")
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#think-row")).to_be_visible()  # the session server has a "-think" model
    assert page.evaluate("sessionStorage.getItem('af3-api-key')") == API_KEY

    page.click("summary")
    page.fill("#max-tokens", "8")
    page.set_input_files("#audio-file", espeak_wav)
    expect(page.locator("#attachment-name")).to_have_text(espeak_wav.name)
    page.fill("#question", "What is said in the audio?")
    page.click("#send")
    answers = page.locator(".turn.assistant .answer")
    expect(answers.first).to_have_text(re.compile(".+", re.S))  # streamed text arrives
    usage = page.locator(".turn.assistant .usage")
    expect(usage.first).to_contain_text(" audio)")  # the stream's last chunk arrived
    first_answer = answers.first.text_content()

    # The same request without streaming gives what the page showed (greedy decoding).
    reply = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={**sent[0], "stream": False, "stream_options": None},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    assert reply.json()["choices"][0]["message"]["content"] == first_answer

    # A follow-up: the history goes along, the audio stays in the first turn only.
    page.fill("#question", "Say it again.")
    page.press("#question", "Enter")
    expect(usage.nth(1)).to_contain_text("generated")
    messages = sent[1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert [p["type"] for p in messages[0]["content"]] == ["input_audio", "text"]
    assert messages[1]["content"] == first_answer
    assert messages[2]["content"] == [{"type": "text", "text": "Say it again."}]
    # Both turns name one conversation, for a session-affinity load balancer.
    assert re.fullmatch("[0-9a-f]{32}", sessions[0]) and sessions[1] == sessions[0]
    page.screenshot(path=ROOT / "docs" / "demo-page.png")

    # A new conversation is a new session.
    page.click("#new-chat")
    page.fill("#question", "Hello?")
    page.press("#question", "Enter")
    expect(page.locator(".turn.assistant .usage").first).to_contain_text("generated")
    assert len(sessions) == 3 and sessions[2] not in (None, sessions[0])
    page.close()


def test_microphone_recording_is_sent_as_wav(browser, server) -> None:
    from playwright.sync_api import expect

    page = browser.new_page()
    page.add_init_script(f"sessionStorage.setItem('af3-api-key', '{API_KEY}')")
    page.goto(f"{server.url}/")
    expect(page.locator("#model")).to_have_text("audio-flamingo-3")
    page.click("#record")
    expect(page.locator("#record")).to_have_text("Stop recording")
    page.wait_for_timeout(1500)
    page.click("#record")
    expect(page.locator("#attachment-name")).to_have_text("recording.wav")
    page.click("summary")
    page.fill("#max-tokens", "2")
    page.click("#send")
    # The server decoded the browser's WAV: ~1.5 s of audio is ~37 audio tokens.
    usage = page.locator(".turn.assistant .usage")
    expect(usage).to_contain_text("generated", timeout=60_000)
    audio_tokens = int(usage.text_content().split("(")[1].split()[0])
    assert 20 <= audio_tokens <= 60
    page.close()


def test_thinking_toggle_for_a_think_model(browser, server) -> None:
    """With a "-think" model listed, the toggle shows and picks it (the server adds AF3's
    thinking sentence). The API is stubbed here, its events ending in CRLF as some proxies
    rewrite them."""
    from playwright.sync_api import expect

    models = {"data": [{"id": "af3"}, {"id": "af3-think"}]}
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Let me "}}]},
        {"choices": [{"index": 0, "delta": {"content": "think."}}]},
    ]
    stream = "".join(f"data: {json.dumps(e)}\r\n\r\n" for e in events) + "data: [DONE]\r\n\r\n"
    sent: list[dict] = []

    def chat(route) -> None:
        sent.append(route.request.post_data_json)
        route.fulfill(status=200, content_type="text/event-stream", body=stream)

    page = browser.new_page()
    page.route("**/v1/models", lambda route: route.fulfill(json=models))
    page.route("**/v1/chat/completions", chat)
    page.goto(f"{server.url}/")
    expect(page.locator("#think-row")).to_be_visible()
    expect(page.locator("#model")).to_have_text("af3")
    page.check("#think")
    page.fill("#question", "Why?")
    page.click("#send")
    expect(page.locator(".turn.assistant .answer")).to_have_text("Let me think.")
    assert sent[0]["model"] == "af3-think"
    assert sent[0]["messages"][0]["content"] == [{"type": "text", "text": "Why?"}]
    page.close()


# Live mode ------------------------------------------------------------------------------

LIVE_SESSION = {
    "type": "realtime",
    "output_modalities": ["text"],
    "max_output_tokens": 8,
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "audio-flamingo-3"},
            "turn_detection": {
                "type": "server_vad",
                "silence_duration_ms": 500,
                "prefix_padding_ms": 300,
                "create_response": True,
            },
        }
    },
}
# Every microphone stream the page opens, so that a test sees its tracks end.
KEEP_STREAMS = """
window.streams = [];
const getUserMedia = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = async (constraints) => {
  const stream = await getUserMedia(constraints);
  window.streams.push(stream);
  return stream;
};
"""
COMPLETED = "conversation.item.input_audio_transcription.completed"
TRACKS_ENDED = (
    "streams.length > 0 && streams.every(s => s.getTracks().every(t => t.readyState === 'ended'))"
)


def open_live_page(browser, server, max_tokens: str = "8"):  # noqa: ANN001, ANN201
    from playwright.sync_api import expect

    page = browser.new_page()
    page.add_init_script(f"sessionStorage.setItem('af3-api-key', '{API_KEY}')")
    page.add_init_script(KEEP_STREAMS)
    page.goto(f"{server.url}/")
    expect(page.locator("#model")).to_have_text("audio-flamingo-3")
    page.click("summary")
    page.fill("#max-tokens", max_tokens)
    return page


def wait_until(page, predicate, what: str, timeout_s: float = 120) -> None:  # noqa: ANN001
    """Lets the page run (and Playwright's event handlers with it) until `predicate()`."""
    for _ in range(int(timeout_s * 10)):
        if predicate():
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"no {what} within {timeout_s:g} s")


def pcm_bytes(event: dict) -> int:
    assert event["type"] == "input_audio_buffer.append"
    return len(base64.b64decode(event["audio"], validate=True))


def test_live_mode_shows_the_server_vad_events_in_chromium(browser, server) -> None:
    """The page's half of live mode against a scripted realtime server (the server's own
    half: the next test): what it sends, and each server_vad event shown where it belongs."""
    from playwright.sync_api import expect

    sockets: list = []
    received: list[dict] = []
    closed: list[int | None] = []

    def realtime(ws) -> None:  # noqa: ANN001
        sockets.append(ws)
        ws.on_message(lambda message: received.append(json.loads(message)))
        ws.on_close(lambda code, reason: closed.append(code))
        ws.send(json.dumps({"type": "session.created", "session": {"type": "realtime"}}))

    page = open_live_page(browser, server)
    page.route_web_socket(re.compile(r".*/v1/realtime\?.*"), realtime)
    page.click("#live")
    expect(page.locator("#live")).to_have_text("Stop live")
    expect(page.locator("#live-status")).to_have_text("Listening")
    wait_until(page, lambda: len(received) >= 6, "audio")
    ws = sockets[0]
    assert ws.url.endswith("/v1/realtime?model=audio-flamingo-3")
    assert received[0] == {"type": "session.update", "session": LIVE_SESSION}
    # 100 ms of 16-bit PCM at 24 kHz an event.
    assert {pcm_bytes(e) for e in received[1:6]} == {4800}

    def server_says(*events: dict) -> None:
        for event in events:
            ws.send(json.dumps(event))

    item, answer = "item_1", {"response_id": "resp_1", "item_id": "item_2"}
    server_says(
        {"type": "input_audio_buffer.speech_started", "audio_start_ms": 300, "item_id": item}
    )
    expect(page.locator("#live-status")).to_have_text("Hearing you")
    server_says(
        {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 2100, "item_id": item},
        {"type": "input_audio_buffer.committed", "item_id": item, "previous_item_id": None},
        {"type": "conversation.item.added", "item": {"id": item, "role": "user", "content": []}},
        {
            "type": "conversation.item.input_audio_transcription.delta",
            "item_id": item,
            "delta": "Hel",
        },
        {
            "type": "conversation.item.input_audio_transcription.delta",
            "item_id": item,
            "delta": "lo",
        },
    )
    expect(page.locator("#live-status")).to_have_text("Listening")
    user = page.locator(".turn.user.live .text")
    expect(user).to_have_text("Hello")  # as it is spoken
    server_says(
        {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}},
        {"type": "response.output_text.delta", "delta": "Some", **answer},
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": item,
            "transcript": "Hello there.",
        },
        {"type": "response.output_text.delta", "delta": "one", **answer},
    )
    expect(user).to_have_text("Hello there.")  # .completed replaces the deltas
    answers = page.locator(".turn.assistant.live")
    expect(answers.locator(".answer")).to_have_text("Someone")
    server_says(
        {"type": "response.output_text.done", "text": "Someone spoke.", **answer},
        {
            "type": "response.done",
            "response": {
                "id": "resp_1",
                "status": "completed",
                "usage": {
                    "input_tokens": 60,
                    "output_tokens": 3,
                    "input_token_details": {"audio_tokens": 50},
                },
            },
        },
    )
    expect(answers.locator(".answer")).to_have_text("Someone spoke.")
    expect(answers.locator(".usage")).to_have_text("60 prompt tokens (50 audio), 3 generated")
    # One user turn and its answer, in order.
    assert page.locator(".turn.live").evaluate_all("ts => ts.map(t => t.className)") == [
        "turn user live",
        "turn assistant live",
    ]
    expect(page.locator("#error")).to_be_hidden()
    server_says(
        {"type": "error", "error": {"type": "invalid_request_error", "message": "Too loud."}}
    )
    expect(page.locator("#error")).to_have_text("Too loud.")

    page.click("#live")
    expect(page.locator("#live")).to_have_text("Live")
    expect(page.locator("#live-status")).to_be_hidden()
    wait_until(page, lambda: closed, "close")
    assert closed == [1000]
    assert page.evaluate(TRACKS_ENDED)
    page.close()


def test_live_mode_refused_says_why_and_lets_the_microphone_go(browser, server) -> None:
    """A key the socket refuses: the server's error event is shown, its close ends live
    mode and the microphone."""
    from playwright.sync_api import expect

    page = open_live_page(browser, server)
    # Changed under the page (as a key revoked meanwhile): typing it would make the page
    # list the models again, which fails before live mode starts.
    page.eval_on_selector("#api-key", "input => { input.value = 'not-the-key'; }")
    page.click("#live")
    expect(page.locator("#error")).to_have_text(
        "Missing or invalid API key. Enter the server's API key above."
    )
    expect(page.locator("#live")).to_have_text("Live")
    expect(page.locator("#live-status")).to_be_hidden()
    assert page.evaluate(TRACKS_ENDED)
    page.close()


@pytest.fixture(scope="module")
def spoken_turn(espeak_wav, tmp_path_factory) -> Path:
    """The microphone's file: half a second of silence, an espeak-ng sentence, then 30 s
    of silence (one turn; Chromium loops the file), 16-bit PCM as Chromium reads it."""
    audio, rate = sf.read(espeak_wav, dtype="float32")
    silence = np.zeros(rate // 2, np.float32)
    path = tmp_path_factory.mktemp("live") / "turn.wav"
    sf.write(
        path, np.concatenate([silence, audio, np.zeros(30 * rate, np.float32)]), rate, "PCM_16"
    )
    return path


@pytest.fixture
def talking_browser(playwright, spoken_turn: Path):
    """Chromium whose microphone says `spoken_turn`."""
    args = [*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={spoken_turn}"]
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
    yield browser
    browser.close()


def test_live_mode_transcribes_and_answers_a_spoken_turn(talking_browser, server) -> None:
    """Live mode against the server, through the page's own Content-Security-Policy: the
    microphone's sentence is heard as one turn (server_vad), its transcript and AF3's
    answer shown as the server sent them; Stop closes the socket and the microphone."""
    from playwright.sync_api import expect

    page = open_live_page(talking_browser, server)
    sockets: list = []
    received: list[dict] = []
    sent: list[dict] = []

    def watch(ws) -> None:  # noqa: ANN001
        sockets.append(ws)
        ws.on("framereceived", lambda payload: received.append(json.loads(payload)))
        ws.on("framesent", lambda payload: sent.append(json.loads(payload)))

    page.on("websocket", watch)
    page.click("#live")

    def seen(kind: str) -> list[dict]:
        return [e for e in received if e["type"] == kind]

    def settled() -> bool:  # the first turn transcribed and answered, or an error
        return bool((seen("response.done") and seen(COMPLETED)) or seen("error"))

    wait_until(page, settled, "answer")
    errors = seen("error")
    assert not errors, errors
    expect(page.locator("#error")).to_be_hidden()
    assert sent[0] == {"type": "session.update", "session": LIVE_SESSION}
    assert {pcm_bytes(e) for e in sent[1:]} == {4800}
    committed = seen("input_audio_buffer.committed")[0]["item_id"]
    assert seen("input_audio_buffer.speech_started")[0]["item_id"] == committed
    # The turn's transcript and AF3's answer, as the server sent them (the tiny model's
    # words are noise).
    transcript = seen(COMPLETED)
    assert [e["item_id"] for e in transcript][:1] == [committed]
    assert transcript[0]["transcript"]
    user = page.locator(".turn.user.live .text")
    expect(user.first).to_have_text(transcript[0]["transcript"])
    assert user.first.text_content() == transcript[0]["transcript"]  # whitespace too
    answer = seen("response.output_text.done")[0]["text"]
    assert answer
    shown = page.locator(".turn.assistant.live .answer").first
    expect(shown).to_have_text(answer)
    assert shown.text_content() == answer
    expect(page.locator(".turn.assistant.live .usage").first).to_contain_text(" audio)")
    order = page.locator(".turn.live").evaluate_all("ts => ts.map(t => t.className)")
    assert order[:2] == ["turn user live", "turn assistant live"]
    expect(page.locator("#error")).to_be_hidden()

    with sockets[0].expect_event("close"):
        page.click("#live")
    assert sockets[0].is_closed()
    assert page.evaluate(TRACKS_ENDED)
    expect(page.locator("#live")).to_have_text("Live")
    page.close()
