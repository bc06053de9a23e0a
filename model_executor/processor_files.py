"""The processor files an AF3 (or MusicFlamingo) checkpoint folder carries: chat template,
feature extractor, tokenizer. The converter writes them for original-layout checkpoints;
the tiny test checkpoints (`af3_model_executor.testing`) write the same."""

from pathlib import Path

from transformers import (
    AudioFlamingo3Processor,
    MusicFlamingoProcessor,
    PreTrainedTokenizerBase,
)

from af3_model_executor.audio_spec import AudioSpec
from af3_model_executor.constants import AUDIO_TOKEN
from af3_model_executor.families import AF3, Family

# A Jinja expression that writes one audio's placeholder.
AUDIO_PLACEHOLDER = "{{ '" + AUDIO_TOKEN + "' }}"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


def chatml_template(list_content: str, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> str:
    """ChatML with a default system turn; `list_content` renders a message whose content
    is a list of parts (`part`), string contents are written as they are."""
    return (
        "{% if messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\n" + system_prompt + "<|im_end|>\\n' }}"
        "{% endif %}"
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['content'] is string %}"
        "{{ message['content'] }}"
        "{% else %}" + list_content + "{% endif %}"
        "{{ '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


def save_processor(
    tokenizer: PreTrainedTokenizerBase,
    chat_template: str,
    out_dir: Path,
    family: Family = AF3,
    max_audio_seconds: int | None = None,
) -> None:
    """The family's processor files: AF-Whisper's features (`AudioSpec`'s: 128 mels,
    30-s windows), at most `max_audio_seconds` (default: the family's, 600 s for AF3)."""
    feature_extractor = AudioSpec().feature_extractor(return_attention_mask=True)
    processor_class = AudioFlamingo3Processor if family is AF3 else MusicFlamingoProcessor
    processor = processor_class(
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=chat_template,
        max_audio_len=max_audio_seconds or family.max_audio_seconds,
    )
    processor.save_pretrained(out_dir)
