"""af3-infer as a process: in-process on the tiny checkpoint and against the session server
(its --think suffix: tests/unit/test_think_suffix.py)."""

import json
from pathlib import Path

import pytest

from tests.support.infer import infer, remote


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
