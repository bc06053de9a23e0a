"""The demo page at `/` in headless Chromium, on the session server (its routes:
tests/http/test_http_demo_page.py)."""

import json
import os
import re

import httpx
import pytest

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
def browser():
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium")
    from playwright.sync_api import expect

    # The engine answers on a 2-core CPU shared with the test run: seconds, not milliseconds.
    expect.set_options(timeout=60_000)
    with sync_playwright() as playwright:
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
