"""Conversations named by the client (X-Session-ID), in-process on the fake engine: what a
session-affinity load balancer and data-parallel engines need."""

from af3_serve.chat.protocol import BALANCER_DEFAULTS
from tests.support.http_helpers import chat_body
from tests.support.in_process import in_process_server


def test_our_clients_name_conversations_with_vllms_session_header() -> None:
    from vllm.entrypoints.generate.base.serving import SESSION_ID_HEADER

    from af3_serve.tools.common import SESSION_HEADER

    assert SESSION_HEADER == SESSION_ID_HEADER


async def test_a_named_conversation_stays_on_one_data_parallel_engine(
    tiny_checkpoint, tmp_path, speech
) -> None:
    """vLLM balances requests over data-parallel engines by load; every turn of a named
    conversation must reach the engine that holds its cached audio."""
    async with in_process_server(tiny_checkpoint, tmp_path, "--data-parallel-size", "2") as app:
        seen: list[tuple[str | None, int | None]] = []
        generate = app.engine.generate

        def spy(*args, **kwargs):
            seen.append((kwargs.get("session_id"), kwargs.get("data_parallel_rank")))
            return generate(*args, **kwargs)

        app.engine.generate = spy
        sessions = [f"conversation-{i}" for i in range(12) for _ in range(2)] + [None]
        for session in sessions:
            headers = {"X-Session-ID": session} if session else {}
            response = await app.client.post(
                "/v1/chat/completions", json=chat_body(speech, max_tokens=1), headers=headers
            )
            assert response.status_code == 200, response.text
    ranks = dict(seen[:-1])
    assert all(ranks[s] == r for s, r in seen[:-1])  # each conversation on one engine
    assert set(ranks.values()) == {0, 1}  # and conversations on both
    assert seen[-1] == (None, None)  # no session: vLLM's own balancing


async def test_what_a_load_balancer_adds_at_its_defaults_is_accepted(http, speech) -> None:
    """vLLM's router adds SGLang-style fields to every body it forwards."""
    added = BALANCER_DEFAULTS
    body = chat_body(speech, max_tokens=2) | added
    assert (await http.client.post("/v1/chat/completions", json=body)).status_code == 200
    for name, default in added.items():
        response = await http.client.post("/v1/chat/completions", json=body | {name: not default})
        assert response.status_code == 400, name
        error = response.json()["error"]
        assert error["code"] == "unsupported_parameter" and error["param"] == name
