"""The numbers and names that define Audio Flamingo 3 for us, each in one place.

Checkpoint files can override the audio front end (`AudioSpec.from_pretrained` reads the
processor config); these are AF3's values and the defaults where a file says nothing.
"""

from pathlib import Path


def served_name(model: str) -> str:
    """The name a checkpoint is served under without --served-model-name: its hub or folder
    name without the `-hf` of transformers' ports (`nvidia/audio-flamingo-next-hf` is
    `audio-flamingo-next`; a hub cache snapshot, `models--nvidia--x-hf/snapshots/<sha>`, is
    `x`); the --model value itself is accepted too."""
    path = Path(model)
    if path.exists():
        path = path.resolve()  # ".", "..", links: the folder's own name
    if len(path.parts) > 2 and path.parts[-2] == "snapshots":
        path = Path(path.parts[-3].split("--")[-1])
    name = path.name or model
    return name.removesuffix("-hf") or name


# The checkpoint served when `--model` is not given, and the name it is served under.
DEFAULT_MODEL = "nvidia/audio-flamingo-3-hf"
DEFAULT_SERVED_MODEL_NAME = served_name(DEFAULT_MODEL)  # audio-flamingo-3
THINK_MODEL_SUFFIX = "-think"

# The placeholder one audio occupies in a prompt before it is expanded into audio tokens.
AUDIO_TOKEN = "<sound>"
# MusicFlamingo checkpoints put each audio's placeholders between these two.
AUDIO_BOS_TOKEN = "<|sound_bos|>"
AUDIO_EOS_TOKEN = "<|sound_eos|>"

# AF-Whisper's input: 16 kHz mono, cut into 30-s windows of 750 tokens each.
SAMPLE_RATE = 16000
WINDOW_SECONDS = 30

# Audios per prompt when the operator sets no limit. A family's longest audio is its
# `families.Family.max_audio_seconds` (or its processor config's).
MAX_AUDIOS_PER_PROMPT = 8

# Qwen2.5-7B's positions: the decoder's max_position_embeddings where config.json sets none.
DEFAULT_DECODER_POSITIONS = 32768

# The file af3-tiny-checkpoint writes into a random-weight checkpoint (the server warns).
TINY_CHECKPOINT_MARKER = "AF3_TINY_CHECKPOINT.json"
