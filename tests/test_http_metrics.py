"""af3_* metrics as the dashboard and alerts read them, in-process on the fake engine."""

import re
import time

from af3_serve.metrics import DISCONNECT_ENDPOINTS, REJECT_REASONS
from tests.in_process import in_process_server
from tests.test_http_edge import chat_body


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} is not on /metrics"
    return float(match.group(1))


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
    to its first token (it used to record the whole latency)."""
    step_s, tokens = 0.05, 40
    async with in_process_server(tiny_checkpoint, tmp_path, step_s=step_s) as app:
        before = (await app.client.get("/metrics")).text
        start = time.perf_counter()
        response = await app.client.post(
            "/v1/chat/completions", json=chat_body(speech, max_tokens=tokens)
        )
        latency = time.perf_counter() - start
        after = (await app.client.get("/metrics")).text
    assert response.status_code == 200
    name = "af3_time_to_first_token_seconds"
    assert sample(after, name + "_count") - sample(before, name + "_count") == 1
    ttft = sample(after, name + "_sum") - sample(before, name + "_sum")
    # The fake engine spends step_s per token: the first token comes after one step, the
    # answer after `tokens` steps.
    assert 0 < ttft < latency - (tokens - 2) * step_s
