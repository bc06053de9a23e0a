"""af3-convert: NVIDIA's original llava-style AF3 layout -> the HF layout the server loads
(af3-convert and af3-serve as processes: tests/e2e/test_convert_processes.py)."""

import hashlib
import json
import logging
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AudioFlamingo3Config,
    AudioFlamingo3EncoderConfig,
    AudioFlamingo3ForConditionalGeneration,
    AutoProcessor,
    AutoTokenizer,
    Qwen2Config,
)

from af3_model_executor.constants import (
    AUDIO_TOKEN,
    SAMPLE_RATE,
    TINY_CHECKPOINT_MARKER,
)
from af3_model_executor.original_layout import (
    MARKER,
    ConversionError,
    convert,
    is_original_layout,
    resolve_model_dir,
)
from af3_model_executor.testing import tiny_checkpoint as tiny_module
from af3_model_executor.testing.original_layout_writer import write_original_layout


@pytest.fixture(scope="module")
def original(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Named as NVIDIA's original release (nvidia/audio-flamingo-3): served as audio-flamingo-3.
    folder = tmp_path_factory.mktemp("original") / "audio-flamingo-3"
    return write_original_layout(tiny_checkpoint, folder)


@pytest.fixture(scope="module")
def converted(original: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert(original, tmp_path_factory.mktemp("converted") / "af3-hf", progress=False)


@pytest.fixture
def source(original: Path, tmp_path: Path) -> Path:
    """A copy of the original layout that the test may change."""
    return Path(shutil.copytree(original, tmp_path / "af3"))


def tensors_of(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in folder.glob("*.safetensors"):
        tensors.update(load_file(path))
    return tensors


def edit_tensors(path: Path, changes: dict[str, torch.Tensor | None]) -> None:
    """Rewrite a safetensors file with tensors replaced, added, or (None) removed."""
    tensors = load_file(path)
    for key, value in changes.items():
        if value is None:
            del tensors[key]
        else:
            tensors[key] = value
    save_file(tensors, path)


def test_original_layout_has_the_release_folders(original: Path) -> None:
    assert is_original_layout(original)
    for name in ("llm", "sound_tower", "sound_mm_projector"):
        assert (original / name / "config.json").is_file()
    index = json.loads((original / "llm" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 2
    top = json.loads((original / "config.json").read_text())
    assert top["model_type"] == "llava_llama" and "llm_cfg" in top
    # The tiny checkpoint's PEFT think/ adapter, under the original module names.
    adapter = load_file(original / "stage35" / "adapter_model.safetensors")
    assert adapter and all(k.startswith("base_model.model.llm.model.layers.") for k in adapter)
    non_lora = torch.load(original / "stage35" / "non_lora_trainables.bin", weights_only=True)
    projector = "base_model.model.sound_mm_projector.layers."
    assert non_lora and all(k.startswith(projector) for k in non_lora)


def test_round_trip_gives_back_every_tensor_and_config(
    tiny_checkpoint: Path, converted: Path
) -> None:
    expected = load_file(tiny_checkpoint / "model.safetensors")
    actual = load_file(converted / "model.safetensors")
    assert actual.keys() == expected.keys()
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, key
        assert torch.equal(actual[key], tensor), key
    tiny_entries = {p.name for p in tiny_checkpoint.iterdir()}
    converted_entries = {p.name for p in converted.iterdir()}
    assert converted_entries - {MARKER} == tiny_entries - {TINY_CHECKPOINT_MARKER}
    for name in ("config.json", "processor_config.json", "generation_config.json"):
        assert json.loads((converted / name).read_text()) == json.loads(
            (tiny_checkpoint / name).read_text()
        ), name


def test_large_checkpoints_are_written_in_shards(
    tiny_checkpoint: Path, original: Path, tmp_path: Path
) -> None:
    out = convert(original, tmp_path / "sharded", progress=False, shard_bytes=500_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    expected = load_file(tiny_checkpoint / "model.safetensors")
    actual = tensors_of(out)
    assert actual.keys() == expected.keys() == index["weight_map"].keys()
    assert all(torch.equal(actual[k], v) for k, v in expected.items())


def load_original_by_hand(original: Path) -> AudioFlamingo3ForConditionalGeneration:
    """The original layout read without the converter: configs from llm/ and
    sound_tower/, each component's tensors under transformers' in-memory names."""
    tower = json.loads((original / "sound_tower" / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(original / "llm")
    config = AudioFlamingo3Config(
        text_config=Qwen2Config.from_pretrained(original / "llm"),
        audio_config=AudioFlamingo3EncoderConfig(
            num_mel_bins=tower["num_mel_bins"],
            hidden_size=tower["d_model"],
            num_hidden_layers=tower["encoder_layers"],
            num_attention_heads=tower["encoder_attention_heads"],
            intermediate_size=tower["encoder_ffn_dim"],
            max_source_positions=tower["max_source_positions"],
        ),
        audio_token_id=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN),
    )
    state = {}
    for key, tensor in tensors_of(original / "llm").items():
        name = key if key.startswith("lm_head.") else "model.language_model." + key[len("model.") :]
        state[name] = tensor
    for key, tensor in tensors_of(original / "sound_tower").items():
        state["model.audio_tower." + key] = tensor
    for key, tensor in tensors_of(original / "sound_mm_projector").items():
        layer = {"layers.0.": "linear_1.", "layers.2.": "linear_2."}[key[: len("layers.0.")]]
        state["model.multi_modal_projector." + layer + key[len("layers.0.") :]] = tensor
    model = AudioFlamingo3ForConditionalGeneration(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def test_converted_model_gives_the_logits_of_the_original_loaded_by_hand(
    original: Path, converted: Path, speech
) -> None:
    processor = AutoProcessor.from_pretrained(converted)
    conversation = [
        {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What is said?"}]}
    ]
    prompt = processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[prompt], audio=[speech[: 4 * SAMPLE_RATE]], return_tensors="pt")
    assert (inputs["input_ids"] == processor.audio_token_id).sum() > 50

    hf_model = AudioFlamingo3ForConditionalGeneration.from_pretrained(
        converted, dtype=torch.float32
    ).eval()
    by_hand = load_original_by_hand(original)
    with torch.inference_mode():
        logits = hf_model(**inputs).logits
        reference = by_hand(**inputs).logits
    assert torch.equal(logits, reference)
    # The audio reaches the logits: silence instead of speech changes them.
    silent = processor(text=[prompt], audio=[speech[: 4 * SAMPLE_RATE] * 0], return_tensors="pt")
    with torch.inference_mode():
        assert not torch.equal(hf_model(**silent).logits, logits)


def test_chat_template_places_each_audio_where_it_appears(converted: Path) -> None:
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare this clip: "},
                {"type": "audio", "path": "first.wav"},
                {"type": "text", "text": " with the next one."},
            ],
        },
        {"role": "assistant", "content": "Send the next one."},
        {
            "role": "user",
            "content": [
                {"type": "audio", "path": "second.wav"},
                {"type": "text", "text": "Which is louder?"},
            ],
        },
    ]
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nCompare this clip: <sound> with the next one.<|im_end|>\n"
        "<|im_start|>assistant\nSend the next one.<|im_end|>\n"
        "<|im_start|>user\n<sound>Which is louder?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # The processor, and the tokenizer the server renders prompts with.
    for renderer in (AutoProcessor, AutoTokenizer):
        rendered = renderer.from_pretrained(converted).apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        assert rendered == expected, renderer


def assert_refused(source: Path, tmp_path: Path, pattern: str) -> None:
    """Conversion fails with a message matching pattern and leaves nothing behind."""
    before = set(tmp_path.iterdir())
    with pytest.raises(ConversionError, match=pattern):
        convert(source, tmp_path / "out", progress=False)
    assert set(tmp_path.iterdir()) == before


def test_refuses_a_tensor_with_no_place_in_the_model(source: Path, tmp_path: Path) -> None:
    edit_tensors(
        source / "sound_mm_projector" / "model.safetensors", {"layers.4.weight": torch.ones(3)}
    )
    assert_refused(
        source, tmp_path, r"no place in the model: 1 \(sound_mm_projector/layers.4.weight\)"
    )


def test_refuses_a_wrong_shape_naming_both_shapes(source: Path, tmp_path: Path) -> None:
    edit_tensors(
        source / "sound_mm_projector" / "model.safetensors", {"layers.2.bias": torch.ones(129)}
    )
    assert_refused(
        source,
        tmp_path,
        re.escape("sound_mm_projector/layers.2.bias is [129], the model needs [128]"),
    )


def test_refuses_when_a_parameter_has_no_tensor(source: Path, tmp_path: Path) -> None:
    edit_tensors(source / "sound_tower" / "model.safetensors", {"layer_norm.bias": None})
    assert_refused(
        source, tmp_path, r"parameters no tensor fills: 1 \(audio_tower.layer_norm.bias\)"
    )


def test_refuses_a_source_without_llm(source: Path, tmp_path: Path) -> None:
    shutil.rmtree(source / "llm")
    assert_refused(
        source, tmp_path, r"not an AF3 checkpoint in the original layout: it lacks llm/ "
    )


def test_refuses_a_non_empty_destination_unless_told_to_overwrite(
    original: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "notes.txt").write_text("keep me")
    with pytest.raises(ConversionError, match="exists and is not empty"):
        convert(original, dst, progress=False)
    assert [p.name for p in dst.iterdir()] == ["notes.txt"]
    convert(original, dst, progress=False, overwrite=True)
    assert (dst / "model.safetensors").is_file() and not (dst / "notes.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_stage35_is_renamed_on_the_way_out_and_copied_verbatim_on_the_way_in(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    hf = Path(
        shutil.copytree(tiny_checkpoint, tmp_path / "hf", ignore=shutil.ignore_patterns("think"))
    )
    think = hf / "think"
    think.mkdir()
    lora = "base_model.model.model.language_model.layers.0.self_attn.q_proj."
    adapter = {
        lora + "lora_A.weight": torch.randn(8, 128),
        lora + "lora_B.weight": torch.randn(128, 8),
        "base_model.model.lm_head.lora_A.weight": torch.randn(8, 128),
    }
    save_file(adapter, think / "adapter_model.safetensors")
    non_lora = {
        "base_model.model.model.multi_modal_projector.linear_1.weight": torch.randn(128, 64),
        "base_model.model.model.multi_modal_projector.linear_2.bias": torch.randn(128),
        "base_model.model.model.audio_tower.layer_norm.weight": torch.randn(64),
    }
    torch.save(non_lora, think / "non_lora_trainables.bin")
    config = {"peft_type": "LORA", "r": 8, "base_model_name_or_path": "nvidia/audio-flamingo-3-hf"}
    (think / "adapter_config.json").write_text(json.dumps(config))

    original = write_original_layout(hf, tmp_path / "original")
    stage35 = original / "stage35"
    renamed_adapter = load_file(stage35 / "adapter_model.safetensors")
    original_lora = "base_model.model.llm.model.layers.0.self_attn.q_proj."
    assert renamed_adapter.keys() == {
        original_lora + "lora_A.weight",
        original_lora + "lora_B.weight",
        "base_model.model.llm.lm_head.lora_A.weight",
    }
    assert torch.equal(
        renamed_adapter[original_lora + "lora_B.weight"], adapter[lora + "lora_B.weight"]
    )
    renamed_non_lora = torch.load(stage35 / "non_lora_trainables.bin", weights_only=True)
    assert renamed_non_lora.keys() == {
        "base_model.model.sound_mm_projector.layers.0.weight",
        "base_model.model.sound_mm_projector.layers.2.bias",
        "base_model.model.sound_tower.layer_norm.weight",
    }
    assert torch.equal(
        renamed_non_lora["base_model.model.sound_tower.layer_norm.weight"],
        non_lora["base_model.model.model.audio_tower.layer_norm.weight"],
    )
    stage35_config = json.loads((stage35 / "adapter_config.json").read_text())
    assert stage35_config == {**config, "base_model_name_or_path": str(original.resolve())}

    out = convert(original, tmp_path / "converted", progress=False)
    copied = sorted(p.name for p in (out / "think").iterdir())
    assert copied == sorted(p.name for p in stage35.iterdir())
    for name in copied:
        assert (out / "think" / name).read_bytes() == (stage35 / name).read_bytes(), name
    assert json.loads((out / MARKER).read_text())["think_adapter"] is True


def conversions(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.getMessage().startswith("converting ") for r in caplog.records)


def test_resolve_model_dir_converts_once_and_again_after_a_source_change(
    source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="af3_serve.convert")
    cache = tmp_path / "cache"
    served = resolve_model_dir(str(source), cache)
    digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
    assert served == str(cache / digest)
    marker = Path(served) / MARKER
    stamp = marker.stat().st_mtime_ns
    assert json.loads(marker.read_text())["sources"]["checkpoint"] == str(source.resolve())

    assert resolve_model_dir(str(source), cache) == served
    assert marker.stat().st_mtime_ns == stamp
    assert conversions(caplog) == 1

    new_bias = torch.full((128,), 0.5)
    edit_tensors(source / "sound_mm_projector" / "model.safetensors", {"layers.2.bias": new_bias})
    assert resolve_model_dir(str(source), cache) == served
    assert conversions(caplog) == 2
    converted_bias = load_file(Path(served) / "model.safetensors")[
        "multi_modal_projector.linear_2.bias"
    ]
    assert torch.equal(converted_bias, new_bias)
    assert [p.name for p in cache.iterdir()] == [digest]


def test_resolve_model_dir_leaves_other_models_alone(tiny_checkpoint: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert resolve_model_dir(str(tiny_checkpoint), cache) == str(tiny_checkpoint)
    assert resolve_model_dir("nvidia/audio-flamingo-3-hf", cache) == "nvidia/audio-flamingo-3-hf"
    assert not cache.exists()


def test_tiny_builder_writes_the_original_layout(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    out = tmp_path / "tiny-original"
    monkeypatch.setattr(sys, "argv", ["af3-tiny-checkpoint", str(out), "--layout", "original"])
    tiny_module.main()
    assert "original layout" in capsys.readouterr().out
    assert is_original_layout(out) and not (out / "model.safetensors").exists()
    components = ("llm", "sound_tower", "sound_mm_projector")
    count = sum(len(tensors_of(out / name)) for name in components)
    assert count == len(load_file(tiny_checkpoint / "model.safetensors"))
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-original"]
