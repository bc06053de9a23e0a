"""af3-infer: in-process on the tiny checkpoint and against the session server."""

import json
import subprocess
import sys
from pathlib import Path

from af3_serve.tools.common import THINK_SUFFIX, question
from tests.server import API_KEY

QUESTION = "What is said in the audio?"


def infer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "af3_serve.tools.infer", "--text", QUESTION, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def remote(server, *args: str) -> subprocess.CompletedProcess:
    return infer("--url", server.url, "--api-key", API_KEY, *args)


def test_think_appends_af3s_suffix_once() -> None:
    assert question(" Why? ", think=False) == "Why?"
    assert question("Why?", think=True) == f"Why? {THINK_SUFFIX}"
    assert question(f"Why? {THINK_SUFFIX}", think=True) == f"Why? {THINK_SUFFIX}"


def test_in_process_answer_equals_the_servers(server, tiny_checkpoint, espeak_wav) -> None:
    """The offline engine and af3-serve run the same model and prompt: greedy answers and
    token counts agree."""
    common = ["--audio", str(espeak_wav), "--max-tokens", "6", "--json"]
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


def test_think_lengthens_the_prompt(server, espeak_wav) -> None:
    args = ["--audio", str(espeak_wav), "--max-tokens", "1", "--json"]
    plain = json.loads(remote(server, *args).stdout)["usage"]
    thinking = json.loads(remote(server, *args, "--think").stdout)["usage"]
    assert thinking["prompt_tokens"] > plain["prompt_tokens"]
    assert thinking["audio_tokens"] == plain["audio_tokens"]


def test_errors_exit_non_zero(server, tmp_path: Path, espeak_wav) -> None:
    missing = infer("--url", server.url, "--audio", str(tmp_path / "none.wav"))
    assert missing.returncode == 2 and "no such audio file" in missing.stderr
    wrong_key = infer("--url", server.url, "--api-key", "wrong", "--audio", str(espeak_wav))
    assert wrong_key.returncode != 0 and "401" in wrong_key.stderr
