"""NVIDIA's original AF3 layout through our console scripts, as processes: af3-convert, and
af3-serve serving such a folder (the conversion itself: tests/unit/test_convert.py)."""

import subprocess
import sys
from pathlib import Path

import openai
import pytest
from safetensors.torch import load_file

from af3_model_executor.constants import DEFAULT_SERVED_MODEL_NAME, SAMPLE_RATE, THINK_MODEL_SUFFIX
from af3_model_executor.testing.original_layout_writer import write_original_layout
from tests.support.audio_files import audio_part
from tests.support.server import API_KEY, start_server


@pytest.fixture(scope="module")
def original(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Named as NVIDIA's original release (nvidia/audio-flamingo-3): served as audio-flamingo-3.
    folder = tmp_path_factory.mktemp("original") / "audio-flamingo-3"
    return write_original_layout(tiny_checkpoint, folder)


def test_console_script_converts_and_refuses_without_a_traceback(
    tiny_checkpoint: Path, original: Path, tmp_path: Path
) -> None:
    script = str(Path(sys.executable).with_name("af3-convert"))
    done = subprocess.run(
        [script, str(original), str(tmp_path / "out"), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    tensors = list(load_file(tiny_checkpoint / "model.safetensors").values())
    parameters = sum(t.numel() for t in tensors)
    size = sum(t.numel() * t.element_size() for t in tensors)
    assert done.stdout == (
        f"converted {original} -> {tmp_path / 'out'}: {len(tensors)} tensors, "
        f"{parameters:,} parameters, {size:,} bytes, think adapter copied to think/\n"
    )
    assert (tmp_path / "out" / "model.safetensors").is_file()

    failed = subprocess.run(
        [script, str(tmp_path / "missing"), str(tmp_path / "out2")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 2
    assert failed.stderr == f"af3-convert: error: {tmp_path / 'missing'} is not a folder\n"
    assert not (tmp_path / "out2").exists()


def test_af3_serve_serves_an_original_layout_folder_and_its_stage35_adapter(
    original: Path, server, speech, tmp_path: Path
) -> None:
    """`af3-serve --model ORIGINAL` converts once into its cache and answers exactly as the
    session server does from the HF-layout checkpoint, thinking mode included."""
    served = start_server(original, tmp_path / "original.log")
    try:
        messages = [{"role": "user", "content": [audio_part(speech[: SAMPLE_RATE * 9])]}]

        def answer(url: str, model: str) -> str | None:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
            reply = client.chat.completions.create(
                model=model, messages=messages, max_tokens=8, temperature=0
            )
            return reply.choices[0].message.content

        for model in (DEFAULT_SERVED_MODEL_NAME, DEFAULT_SERVED_MODEL_NAME + THINK_MODEL_SUFFIX):
            assert answer(served.url, model) == answer(server.url, model), model
        assert "converting original-layout checkpoint" in served.log_text()
    finally:
        served.stop()
