"""The numbers and names that define Audio Flamingo 3 for us, each in one place.

Checkpoint files can override the audio front end (`AudioSpec.from_pretrained` reads the
processor config); these are AF3's values and the defaults where a file says nothing.
"""

# The checkpoint served when `--model` is not given, and the name clients ask for.
DEFAULT_MODEL = "nvidia/audio-flamingo-3-hf"
DEFAULT_SERVED_MODEL_NAME = "audio-flamingo-3"
THINK_MODEL_SUFFIX = "-think"

# The placeholder one audio occupies in a prompt before it is expanded into audio tokens.
AUDIO_TOKEN = "<sound>"
# MusicFlamingo checkpoints put each audio's placeholders between these two.
AUDIO_BOS_TOKEN = "<|sound_bos|>"
AUDIO_EOS_TOKEN = "<|sound_eos|>"

# AF-Whisper's input: 16 kHz mono, cut into 30-s windows of 750 tokens each.
SAMPLE_RATE = 16000
WINDOW_SECONDS = 30

# AF3's longest audio (20 windows, 15,000 audio tokens) and our audios per prompt.
MAX_AUDIO_SECONDS = 600
MAX_AUDIOS_PER_PROMPT = 8
