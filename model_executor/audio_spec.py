"""What a checkpoint's audio is to the model: its front end's settings (processor_config.json,
the family's defaults where it is silent), the 30-s windows and their token counts, the
one length check, and the engine sizes that follow from the longest audio.

The one source for these facts: the API's edge, our multimodal processor, the model, the
engine sizing, the processor files we write, the benchmarks and the tests all read them
here. Only the standard library at import (transformers when a checkpoint is read), so
the benchmarks' harness can use it on a host without vLLM.
"""

import json
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from af3_model_executor.constants import SAMPLE_RATE, WINDOW_SECONDS
from af3_model_executor.families import AF3, family_of_processor

if TYPE_CHECKING:
    from transformers import WhisperFeatureExtractor


@dataclass(frozen=True)
class AudioSpec:
    """Feature-extractor settings of a checkpoint (its processor_config.json)."""

    sampling_rate: int = SAMPLE_RATE
    num_mel_bins: int = 128
    n_fft: int = 400
    hop_length: int = 160
    window_seconds: int = WINDOW_SECONDS
    max_audio_seconds: float = AF3.max_audio_seconds
    audio_span_tokens: bool = AF3.audio_span_tokens  # <|sound_bos|>/<|sound_eos|> around each

    @classmethod
    def from_pretrained(cls, model: str, revision: str | None = None) -> "AudioSpec":
        from transformers.utils import cached_file

        path = cached_file(model, "processor_config.json", revision=revision)
        config = json.loads(open(path).read())
        fe = config["feature_extractor"]
        family = family_of_processor(config.get("processor_class"))
        return cls(
            sampling_rate=fe["sampling_rate"],
            num_mel_bins=fe["feature_size"],
            n_fft=fe["n_fft"],
            hop_length=fe["hop_length"],
            window_seconds=fe["chunk_length"],
            # Without max_audio_len, the processor class's own default (600 s AF3, 1200 s MF).
            max_audio_seconds=config.get("max_audio_len", family.max_audio_seconds),
            audio_span_tokens=family.audio_span_tokens,
        )

    def feature_extractor(self, **kwargs: Any) -> "WhisperFeatureExtractor":
        """transformers' Whisper feature extractor with these settings."""
        from transformers import WhisperFeatureExtractor

        return WhisperFeatureExtractor(
            feature_size=self.num_mel_bins,
            sampling_rate=self.sampling_rate,
            hop_length=self.hop_length,
            n_fft=self.n_fft,
            chunk_length=self.window_seconds,
            **kwargs,
        )

    def limited(self, max_audio_seconds: float | None) -> "AudioSpec":
        """This spec with a lower limit (--max-audio-seconds); None keeps the checkpoint's."""
        return (
            self
            if max_audio_seconds is None
            else replace(self, max_audio_seconds=max_audio_seconds)
        )

    @property
    def window_samples(self) -> int:
        return self.window_seconds * self.sampling_rate

    @property
    def window_frames(self) -> int:
        return self.window_samples // self.hop_length

    @property
    def max_windows(self) -> int:
        return int(self.max_audio_seconds // self.window_seconds)  # a lowered limit may be a float

    @property
    def max_samples(self) -> int:
        return self.max_windows * self.window_samples

    @property
    def max_audio_tokens(self) -> int:
        """Placeholders of the longest audio (15,000 for 600 s)."""
        return self.num_audio_tokens(self.max_samples)

    @property
    def span_tokens(self) -> int:
        """Tokens around each audio's placeholders (MusicFlamingo's bos/eos): 2 or 0."""
        return 2 if self.audio_span_tokens else 0

    @property
    def max_prompt_tokens(self) -> int:
        """Prompt tokens of the longest audio: its placeholders and span tokens."""
        return self.max_audio_tokens + self.span_tokens

    def engine_sizes(self, decoder_positions: int) -> dict[str, int]:
        """Engine settings for prompts holding the longest audio: AF3's 600 s (15,000
        placeholders) gives 32,768 / 16,384 / 60,000, AF-Next's 1800 s (45,002 with its span
        tokens) 65,536 / 49,152 / 180,008. Never below AF3's: a lowered limit keeps them."""
        tokens = max(self.max_prompt_tokens, AudioSpec().max_prompt_tokens)
        return {
            # The audio with room for the conversation and the answer, within the
            # decoder's positions.
            "max_model_len": min(decoder_positions, 1 << (tokens + 4096 - 1).bit_length()),
            # The longest audio's prompt prefills in one step.
            "max_num_batched_tokens": -(-(tokens + 1024) // 8192) * 8192,
            # Four such audios' embeddings held between prefill steps.
            "encoder_cache_tokens": 4 * tokens,
        }

    @property
    def min_samples(self) -> int:
        """Fewest samples that yield one audio token (3 mel frames)."""
        return 2 * self.hop_length + 1

    def window_frame_counts(self, num_samples: int) -> list[int]:
        """Valid mel frames of each 30-s window the encoder runs (the feature mask's sums).

        A last window that yields no audio token (under 3 mel frames: 30 s + 1..320
        samples) is left out: transformers' processor counts no placeholder for it and its
        model keeps nothing of it, so it gets no encoder work here either."""
        counts = []
        for start in range(0, max(num_samples, 1), self.window_samples):
            frames = math.ceil(min(self.window_samples, num_samples - start) / self.hop_length)
            if tokens_after_pooling(frames) > 0:
                counts.append(frames)
        return counts

    def encoded_samples(self, num_samples: int) -> int:
        """How many of a clip's samples its token-bearing windows hold (the rest, at most
        320 samples past a 30-s boundary, yield no token)."""
        return min(num_samples, len(self.window_frame_counts(num_samples)) * self.window_samples)

    def window_token_counts(self, num_samples: int) -> list[int]:
        """Audio tokens of each window the encoder runs: the encoder's own output sizes."""
        return [tokens_after_pooling(frames) for frames in self.window_frame_counts(num_samples)]

    def window_cuts(self, num_samples: int) -> list[int]:
        """Where a clip can be cut into clips the model takes exactly as the whole: at its
        30-s window boundaries (AF3 encodes each window alone, and its template writes the
        audios' placeholders side by side), each cut leaving a token-bearing rest. None for
        MusicFlamingo checkpoints, whose span tokens and rotary time belong to the whole."""
        if self.audio_span_tokens:
            return []
        ends = range(self.window_samples, num_samples, self.window_samples)
        return [end for end in ends if num_samples - end >= self.min_samples]

    @property
    def max_clips(self) -> int:
        """Most clips `window_cuts` makes of an audio within the limit."""
        return max(1, math.ceil(self.max_audio_seconds / self.window_seconds))

    def num_audio_tokens(self, num_samples: int) -> int:
        """Placeholder count: what the windows yield, equal to HF's formula over the summed
        mask of all windows (each full window adds an even 1,500 positions)."""
        return sum(self.window_token_counts(num_samples))

    def length_error(self, num_samples: int) -> "AudioLengthError | None":
        """Why the model cannot take a clip of this length, or None: the one check the API's
        edge and our multimodal processor both apply, so nothing else reaches the engine."""
        seconds = num_samples / self.sampling_rate
        if num_samples > self.max_samples:
            return AudioLengthError(
                f"Audio is {seconds:.2f} s long; the maximum is {self.max_audio_seconds} s "
                f"({self.max_windows} windows of {self.window_seconds} s).",
                code="audio_too_long",
            )
        if num_samples < self.min_samples:  # only a first window can yield no token
            min_ms = self.min_samples / self.sampling_rate * 1000
            return AudioLengthError(
                f"Audio is {seconds * 1000:.1f} ms long; the minimum is {self.min_samples} "
                f"samples ({min_ms:.1f} ms at {self.sampling_rate} Hz), one audio token.",
                code="audio_too_short",
            )
        return None

    def check_length(self, num_samples: int) -> None:
        """Refuse audio the model cannot take, naming the limit."""
        if (error := self.length_error(num_samples)) is not None:
            raise error


class AudioLengthError(ValueError):
    """A clip the model cannot take; `code` says which limit (OpenAI-style error code)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def positions_after_conv(frames: int) -> int:
    """Encoder positions after the stride-2 conv."""
    return (frames - 1) // 2 + 1


def tokens_after_pooling(frames: int) -> int:
    """Audio tokens after the conv and the stride-2 average pool."""
    return (positions_after_conv(frames) - 2) // 2 + 1
