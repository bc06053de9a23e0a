"""Hostile and broken input, in-process on the fake engine: every case gets the right status and
an OpenAI-shaped error without internals, and the server stays healthy; so do fuzzed request
bodies. A real af3-serve gets the heaviest of them in tests/e2e/test_server_adversarial.py."""

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.hostile_inputs import CASES, MAX_BODY, Case
from tests.support.http_helpers import CHAT, assert_clean, server_fixture
from tests.support.server import PRIVATE_MEDIA_HOSTS

# One server for all cases, as the session server gets them in a real run.
api = server_fixture(
    "--allowed-local-media-path",
    "{tmp}/media",
    "--max-request-bytes",
    str(MAX_BODY),
    "--max-pending-requests",
    "2",
    "--allowed-media-domains",
    *PRIVATE_MEDIA_HOSTS,
    scope="module",
)


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_hostile_input(api, case: Case) -> None:
    response = await case.send(api.client, api.tmp / "media")
    assert response.status_code in case.statuses, response.text[:300]
    assert_clean(response)
    assert (await api.client.get("/health")).status_code == 200


def test_suite_has_fifty_cases() -> None:
    assert len({c.name for c in CASES}) >= 50


BODIES = st.dictionaries(
    st.sampled_from(
        [
            "model",
            "messages",
            "max_tokens",
            "temperature",
            "n",
            "stop",
            "stream",
            "seed",
            "top_p",
            "logprobs",
            "top_logprobs",
            "user",
            "x",
        ]
    ),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=8,
    ),
    max_size=6,
)


@pytest.mark.asyncio(loop_scope="module")
async def test_fuzzed_request_bodies_never_break_the_server(api) -> None:
    """Hypothesis runs in a thread and sends each body through this test's event loop."""
    loop = asyncio.get_running_loop()

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(BODIES)
    def check(body: dict) -> None:
        send = asyncio.run_coroutine_threadsafe(api.client.post(CHAT, json=body), loop)
        response = send.result(timeout=60)
        assert response.status_code < 500, response.text[:300]
        assert_clean(response)

    await asyncio.to_thread(check)
    assert (await api.client.get("/health")).status_code == 200
