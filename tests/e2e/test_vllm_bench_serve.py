"""`vllm bench serve`, vLLM's own load tester, works against af3-serve with real audio."""

import json
import os
import subprocess
import sys
from pathlib import Path

import soundfile as sf

from tests.support.server import API_KEY

# The CPU build's `vllm` console script fails (it looks up the `vllm` distribution), so
# the benchmark's own entry point is called; the arguments are those of `vllm bench serve`.
BENCH = (
    "import argparse, sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "parser = argparse.ArgumentParser()\n"
    "add_cli_args(parser)\n"
    "main(parser.parse_args(sys.argv[1:]))\n"
)


def test_vllm_bench_serve_custom_audio(server, speech, tiny_checkpoint: Path, tmp_path: Path):
    rows = []
    for i, seconds in enumerate((4, 9)):
        path = tmp_path / f"clip{i}.wav"
        sf.write(path, speech[i * 16000 : (i + seconds) * 16000], 16000)
        rows.append(json.dumps({"prompt": "Describe the audio.", "audio": str(path)}))
    dataset = tmp_path / "audio.jsonl"
    dataset.write_text("\n".join(rows) + "\n")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            BENCH,
            "--backend",
            "openai-chat",
            "--endpoint",
            "/v1/chat/completions",
            "--dataset-name",
            "custom_audio",
            "--dataset-path",
            str(dataset),
            "--enable-multimodal-chat",
            "--model",
            "audio-flamingo-3",
            "--tokenizer",
            str(tiny_checkpoint),
            "--base-url",
            server.url,
            "--num-prompts",
            "2",
            "--custom-output-len",
            "8",
            "--ignore-eos",
            "--save-result",
            "--result-dir",
            str(tmp_path),
            "--result-filename",
            "bench.json",
        ],
        env={**os.environ, "OPENAI_API_KEY": API_KEY},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["completed"] == 2 and report["failed"] == 0
    assert report["total_output_tokens"] == 16
