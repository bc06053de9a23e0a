"""Server-sent events as line-splitting clients read them."""

import json

from af3_serve.serving import sse


def test_an_event_stays_one_line_for_clients_that_split_at_unicode_breaks() -> None:
    """U+2028, U+2029 and NEL may stand raw in JSON; str.splitlines (and httpx's
    `aiter_lines`) breaks lines at them, so they are sent escaped: one line, the same value."""
    value = {"delta": "a\u2028b\u2029c\x85d é 音"}
    lines = sse(json.dumps(value, ensure_ascii=False)).splitlines()
    assert len(lines) == 2 and lines[1] == ""
    assert json.loads(lines[0].removeprefix("data: ")) == value
    assert sse("[DONE]") == "data: [DONE]\n\n"
