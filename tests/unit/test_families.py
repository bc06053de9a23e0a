"""The checkpoint families without an engine: tiny checkpoints written with transformers'
own classes, the family from config.json (anything else refused at start in one line),
limits and engine defaults from the checkpoint, save_pretrained's weight names, the
rotary time embeddings against transformers' own module (a MusicFlamingo checkpoint through
the HTTP edge: tests/http/test_http_music_flamingo.py)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from af3_model_executor.audio_spec import AudioSpec, tokens_after_pooling
from af3_model_executor.families import MUSIC_FLAMINGO, checkpoint_family
from af3_model_executor.rotary_time import RotaryTimeEmbedding
from af3_model_executor.testing.tiny_checkpoint import build_checkpoint
from af3_model_executor.weight_names import official_name
from af3_serve import cli
from af3_serve.config import SettingsError, parse_args
from af3_serve.engine import build_vllm_config
from af3_serve.model_files import resolve_model_files


def weight_names(checkpoint: Path) -> set[str]:
    with safe_open(checkpoint / "model.safetensors", "pt") as f:
        return set(f.keys())


def vllm_config(checkpoint: Path, cache: Path, *flags: str):
    config = parse_args(["--model", str(checkpoint), "--cache-dir", str(cache), *flags])
    files = resolve_model_files(config.model, config.think_adapter, config.cache_dir)
    return files, build_vllm_config(config, files)


def test_tiny_checkpoints_are_transformers_own(tiny_music_flamingo, tiny_af_next) -> None:
    from transformers import AutoConfig, AutoProcessor, MusicFlamingoProcessor

    for checkpoint, seconds in ((tiny_music_flamingo, 1200), (tiny_af_next, 1800)):
        config = AutoConfig.from_pretrained(checkpoint)
        assert type(config).__name__ == "MusicFlamingoConfig"
        assert config.architectures == ["MusicFlamingoForConditionalGeneration"]
        assert config.rope_parameters["rope_theta"] == 1200.0
        assert config.rope_parameters["partial_rotary_factor"] == 0.2
        processor = AutoProcessor.from_pretrained(checkpoint)
        assert isinstance(processor, MusicFlamingoProcessor)
        assert processor.max_audio_len == seconds
        assert processor.audio_token_ids == [
            config.audio_token_id,
            config.audio_bos_token_id,
            config.audio_eos_token_id,
        ]
        assert checkpoint_family(checkpoint) is MUSIC_FLAMINGO
    assert AutoConfig.from_pretrained(tiny_af_next).text_config.max_position_embeddings == 131072


def test_af_next_think_release_is_a_checkpoint_of_its_own(tiny_af_next, tmp_path) -> None:
    think = build_checkpoint(tmp_path / "think", family="af-next", think=True)
    assert not (think / "think").exists()
    assert weight_names(think) == weight_names(tiny_af_next)
    with (
        safe_open(think / "model.safetensors", "pt") as a,
        safe_open(tiny_af_next / "model.safetensors", "pt") as b,
    ):
        name = "multi_modal_projector.linear_1.weight"
        assert not torch.equal(a.get_tensor(name), b.get_tensor(name))
    with pytest.raises(ValueError, match="no thinking variant"):
        build_checkpoint(tmp_path / "mf", family="musicflamingo", think=True)


def test_save_pretrained_names_map_onto_the_hub_names(tiny_music_flamingo, tiny_af_next) -> None:
    """What transformers' save_pretrained writes (the decoder one `model.` deeper) names
    the same weights as the hub's files, through the one table of namings."""
    saved = weight_names(tiny_music_flamingo)
    assert any(n.startswith("language_model.model.model.layers.") for n in saved)
    assert {official_name(n) for n in saved} == weight_names(tiny_af_next)
    assert official_name("language_model.model.layers.0.mlp.up_proj.weight") == (
        "language_model.model.layers.0.mlp.up_proj.weight"
    )


def test_a_thinking_adapter_checks_against_save_pretrained_names(tmp_path) -> None:
    """AF3 saved by transformers: its think/ adapter's non-LoRA tensors are found in the
    base weights under their official names (a decoder tensor equal to the base's too)."""
    checkpoint = build_checkpoint(tmp_path / "af3", think=True, layout="transformers")
    bin_path = checkpoint / "think" / "non_lora_trainables.bin"
    with safe_open(checkpoint / "model.safetensors", "pt") as f:
        norm = f.get_tensor("language_model.model.model.norm.weight")
    tensors = torch.load(bin_path, weights_only=True)
    torch.save({**tensors, "base_model.model.model.language_model.norm.weight": norm}, bin_path)
    files = resolve_model_files(str(checkpoint), "auto", tmp_path / "cache")
    assert files.think.projector is not None and files.think.unchanged == 1


@pytest.mark.parametrize(
    ("family_of", "limits"),
    [
        ("tiny_checkpoint", (600, 32768, 16384, 60000)),
        # 30,002 placeholders: the tiny decoder's 32,768 positions bound the context.
        ("tiny_music_flamingo", (1200, 32768, 32768, 120008)),
        ("tiny_af_next", (1800, 65536, 49152, 180008)),
    ],
)
def test_limits_and_engine_defaults_follow_the_checkpoint(
    request, tmp_path, family_of: str, limits: tuple
) -> None:
    files, config = vllm_config(request.getfixturevalue(family_of), tmp_path, "--dtype", "float32")
    assert files.audio.max_audio_seconds == limits[0]
    assert config.model_config.max_model_len == limits[1]
    assert config.scheduler_config.max_num_batched_tokens == limits[2]
    assert config.scheduler_config.encoder_cache_size >= limits[3]
    assert config.model_config.architectures == ["AF3ServeForConditionalGeneration"]


def test_af3_engine_sizes_are_those_of_ten_minutes() -> None:
    """AF3's engine settings as they were before they followed the checkpoint; a lowered
    limit keeps them (never below AF3's)."""
    assert AudioSpec().max_prompt_tokens == 15000
    assert AudioSpec().limited(60).engine_sizes(32768) == AudioSpec().engine_sizes(32768)
    assert AudioSpec().engine_sizes(32768) == {
        "max_model_len": 32768,
        "max_num_batched_tokens": 16384,
        "encoder_cache_tokens": 60000,
    }


def test_max_audio_seconds_may_only_lower_the_limit(tiny_af_next, tmp_path) -> None:
    _, lowered = vllm_config(tiny_af_next, tmp_path, "--max-audio-seconds", "600")
    assert lowered.scheduler_config.max_num_batched_tokens == 16384
    _, own = vllm_config(tiny_af_next, tmp_path, "--max-model-len", "50000")
    assert own.model_config.max_model_len == 50000  # the user's flag wins
    with pytest.raises(SettingsError, match="above the checkpoint's limit of 1800 s"):
        vllm_config(tiny_af_next, tmp_path, "--max-audio-seconds", "1801")


def test_an_architecture_we_do_not_serve_is_refused_in_one_line(tmp_path, capsys) -> None:
    folder = tmp_path / "qwen2-audio"
    folder.mkdir()
    config = {"model_type": "qwen2_audio", "architectures": ["Qwen2AudioForConditionalGeneration"]}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--model", str(folder), "--cache-dir", str(tmp_path / "cache")])
    text = str(exit_.value.code)
    assert text.startswith("af3-serve: error: ") and "\n" not in text
    assert "'qwen2_audio' (Qwen2AudioForConditionalGeneration)" in text
    assert "musicflamingo" in text and "audioflamingo3" in text


def test_rotary_time_embeddings_equal_transformers(tiny_af_next) -> None:
    """Our packed RoTE against transformers' module and its input_ids-derived times, for
    three audios of 30 min, 61 s and 7 s in one batch: equal bit for bit."""
    from transformers import AutoConfig
    from transformers.models.musicflamingo import modeling_musicflamingo as hf

    config = AutoConfig.from_pretrained(tiny_af_next)
    # AF-Whisper's width rotates 2 x 256 of 1280 channels; a narrower one runs faster here.
    config.audio_config.hidden_size = config.head_dim = 1280
    assert RotaryTimeEmbedding(config, AudioSpec()).position_angles.shape == (1200, 256)
    config.audio_config.hidden_size = config.head_dim = 320
    spec = AudioSpec(max_audio_seconds=1800)
    window_frames = [spec.window_frame_counts(s * 16000) for s in (1800, 61, 7)]
    post = torch.tensor([tokens_after_pooling(n) for frames in window_frames for n in frames])
    hidden = torch.randn(len(post), 750, 320, generator=torch.Generator().manual_seed(0))
    ids = []
    for frames in window_frames:
        ids += [1, *[config.audio_token_id] * tokens_after_pooling(sum(frames)), 2]
    model = hf.MusicFlamingoModel.__new__(hf.MusicFlamingoModel)
    model.config = config
    times = hf.MusicFlamingoModel._build_audio_timestamps(model, torch.tensor([ids]), post, 750)
    cos, sin = hf.MusicFlamingoRotaryEmbedding(config)(times, seq_len=750)
    valid = torch.arange(750)[None] < post[:, None]
    reference = hf.apply_rotary_time_emb(hidden, cos, sin)[valid]
    ours = RotaryTimeEmbedding(config, spec)(hidden[valid], window_frames)
    assert torch.equal(ours, reference)
