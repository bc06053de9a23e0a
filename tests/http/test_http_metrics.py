"""af3_* metrics as the dashboard and alerts read them, in-process on the fake engine."""

import pytest

from af3_serve.metrics import DISCONNECT_ENDPOINTS, REJECT_REASONS
from tests.support.fake_engine import StepClock
from tests.support.http_helpers import chat_body, metric
from tests.support.in_process import in_process_server


async def test_labelled_counters_exist_at_zero_before_any_event(http) -> None:
    text = (await http.client.get("/metrics")).text
    for reason in REJECT_REASONS:
        assert f'af3_requests_rejected_total{{reason="{reason}"}}' in text
    for endpoint in DISCONNECT_ENDPOINTS:
        assert f'af3_client_disconnects_total{{endpoint="{endpoint}"}}' in text


async def test_time_to_first_token_of_a_whole_answer_is_its_first_token(
    tiny_checkpoint, tmp_path, speech
) -> None:
    """A non-streamed answer arrives once, at its end; the histogram must still get the time
    to its first token (it used to record the whole latency). One clock, moved only by the
    fake engine's steps, serves the server and the engine: the first token comes one step
    after arrival, the answer `tokens` steps after."""
    step_s, tokens = 0.25, 40
    clock = StepClock()
    async with in_process_server(tiny_checkpoint, tmp_path, step_s=step_s, clock=clock) as app:
        before = (await app.client.get("/metrics")).text
        response = await app.client.post(
            "/v1/chat/completions", json=chat_body(speech, max_tokens=tokens)
        )
        after = (await app.client.get("/metrics")).text
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == tokens
    name = "af3_time_to_first_token_seconds"
    assert metric(after, name + "_count") - metric(before, name + "_count") == 1
    ttft = metric(after, name + "_sum") - metric(before, name + "_sum")
    assert ttft == pytest.approx(step_s, rel=1e-9)  # the whole answer took 40 steps
