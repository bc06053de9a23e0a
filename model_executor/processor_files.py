"""The processor files an AF3 checkpoint folder carries: chat template, feature extractor,
tokenizer. The converter writes them for original-layout checkpoints; the tiny test
checkpoint (`af3_model_executor.testing`) writes the same."""

from pathlib import Path

from transformers import AudioFlamingo3Processor, PreTrainedTokenizerBase, WhisperFeatureExtractor

from af3_model_executor.constants import (
    AUDIO_TOKEN,
    MAX_AUDIO_SECONDS,
    SAMPLE_RATE,
    WINDOW_SECONDS,
)

# A Jinja expression that writes one audio's placeholder.
AUDIO_PLACEHOLDER = "{{ '" + AUDIO_TOKEN + "' }}"


def chatml_template(list_content: str) -> str:
    """ChatML with a default system turn; `list_content` renders a message whose content
    is a list of parts (`part`), string contents are written as they are."""
    return (
        "{% if messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
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


def save_processor(tokenizer: PreTrainedTokenizerBase, chat_template: str, out_dir: Path) -> None:
    """AF3's processor files: Whisper features (128 mels, 30-s windows), 600 s at most."""
    feature_extractor = WhisperFeatureExtractor(
        feature_size=128,
        sampling_rate=SAMPLE_RATE,
        hop_length=160,
        n_fft=400,
        chunk_length=WINDOW_SECONDS,
        return_attention_mask=True,
    )
    processor = AudioFlamingo3Processor(
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=chat_template,
        max_audio_len=MAX_AUDIO_SECONDS,
    )
    processor.save_pretrained(out_dir)
