"""af3-infer: in-process on the tiny checkpoint and against the session server."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from af3_model_executor.think_adapter import THINK_SUFFIX
from af3_serve.inputs.prompts import with_think_suffix
from tests.server import API_KEY

QUESTION = "What is said in the audio?"


def infer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "af3_serve.tools.infer", "--text", QUESTION, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def remote(server, *args: str) -> subprocess.CompletedProcess:
    return infer("--url", server.url, "--api-key", API_KEY, *args)


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


@pytest.mark.engine
@pytest.mark.parametrize("mode", [[], ["--think"]], ids=["base", "think"])
def test_in_process_answer_equals_the_servers(
    server, tiny_checkpoint, espeak_wav, mode: list[str]
) -> None:
    """The offline engine and af3-serve run the same model and prompt (thinking mode: the
    same adapter): greedy answers and token counts agree."""
    common = ["--audio", str(espeak_wav), "--max-tokens", "6", "--json", *mode]
    local = infer("--model", str(tiny_checkpoint), *common, timeout=300)
    assert local.returncode == 0, local.stderr[-3000:]
    served = remote(server, *common)
    assert served.returncode == 0, served.stderr[-3000:]
    out = json.loads(local.stdout)  # stdout holds only the JSON: vLLM logs go to stderr
    assert out == json.loads(served.stdout)
    assert set(out) == {"answer", "finish_reason", "usage"}
    assert out["finish_reason"] == "length"
    usage = out["usage"]
    assert usage["completion_tokens"] == 6
    assert usage["audio_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_remote_streams_the_answer_to_the_terminal(server, espeak_wav) -> None:
    audio = ["--audio", str(espeak_wav), str(espeak_wav), "--max-tokens", "5"]
    plain = remote(server, *audio)
    assert plain.returncode == 0, plain.stderr
    as_json = json.loads(remote(server, *audio, "--json").stdout)
    assert plain.stdout == as_json["answer"] + "\n"
    single = json.loads(remote(server, *audio[:2], *audio[3:], "--json").stdout)
    assert as_json["usage"]["audio_tokens"] == 2 * single["usage"]["audio_tokens"]


def test_think_lengthens_the_prompt_and_changes_the_answer(server, espeak_wav) -> None:
    args = ["--audio", str(espeak_wav), "--max-tokens", "6", "--json"]
    plain = json.loads(remote(server, *args).stdout)
    thinking = json.loads(remote(server, *args, "--think").stdout)
    assert thinking["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]
    assert thinking["usage"]["audio_tokens"] == plain["usage"]["audio_tokens"]
    assert thinking["answer"] != plain["answer"]


def test_errors_exit_non_zero(server, tmp_path: Path, espeak_wav) -> None:
    missing = infer("--url", server.url, "--audio", str(tmp_path / "none.wav"))
    assert missing.returncode == 2 and "no such audio file" in missing.stderr
    wrong_key = infer("--url", server.url, "--api-key", "wrong", "--audio", str(espeak_wav))
    assert wrong_key.returncode != 0 and "401" in wrong_key.stderr
