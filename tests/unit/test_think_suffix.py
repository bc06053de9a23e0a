"""Thinking mode's suffix (af3-infer --think, the -think model): added to the last user turn,
once."""

from af3_model_executor.think_adapter import THINK_SUFFIX
from af3_serve.inputs.prompts import with_think_suffix


def test_think_appends_af3s_suffix_once_to_the_last_user_turn() -> None:
    def last_text(conversation: list[dict]) -> str:
        content = with_think_suffix(conversation)[-1]["content"]
        return content if isinstance(content, str) else content[-1]["text"]

    assert last_text([{"role": "user", "content": "Why?"}]) == f"Why? {THINK_SUFFIX}"
    said = [{"role": "user", "content": f"Why? {THINK_SUFFIX}"}]
    assert last_text(said) == f"Why? {THINK_SUFFIX}"
    audio_only = [{"role": "user", "content": [{"type": "audio"}]}]
    assert last_text(audio_only) == THINK_SUFFIX
    history = [
        {"role": "user", "content": "First?"},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": [{"type": "text", "text": "Then?"}, {"type": "audio"}]},
    ]
    turns = with_think_suffix(history)
    assert turns[0]["content"] == "First?" and history[2]["content"][0]["text"] == "Then?"
    assert turns[2]["content"][0]["text"] == f"Then? {THINK_SUFFIX}"
