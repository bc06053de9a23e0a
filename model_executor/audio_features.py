"""AF3's audio front end: 30-s windows, token counts and the Whisper log-mel.

The API process only ships 16 kHz PCM; the log-mel is computed here, inside the
model on its device, batched over every window of a step. The numbers follow
transformers' `AudioFlamingo3Processor` and `WhisperFeatureExtractor` exactly, so
placeholder counts and features equal the reference implementation's.
"""

import json
import math
from dataclasses import dataclass

import torch
from transformers import WhisperFeatureExtractor
from transformers.utils import cached_file

from af3_model_executor.constants import MAX_AUDIO_SECONDS, SAMPLE_RATE, WINDOW_SECONDS
from af3_model_executor.families import family_of_processor


@dataclass(frozen=True)
class AudioSpec:
    """Feature-extractor settings of a checkpoint (its processor_config.json)."""

    sampling_rate: int = SAMPLE_RATE
    num_mel_bins: int = 128
    n_fft: int = 400
    hop_length: int = 160
    window_seconds: int = WINDOW_SECONDS
    max_audio_seconds: int = MAX_AUDIO_SECONDS

    @classmethod
    def from_pretrained(cls, model: str, revision: str | None = None) -> "AudioSpec":
        path = cached_file(model, "processor_config.json", revision=revision)
        config = json.loads(open(path).read())
        fe = config["feature_extractor"]
        # Without max_audio_len, the processor class's own default (600 s AF3, 1200 s MF).
        default_max = family_of_processor(config.get("processor_class")).max_audio_seconds
        return cls(
            sampling_rate=fe["sampling_rate"],
            num_mel_bins=fe["feature_size"],
            n_fft=fe["n_fft"],
            hop_length=fe["hop_length"],
            window_seconds=fe["chunk_length"],
            max_audio_seconds=config.get("max_audio_len", default_max),
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


class LogMel(torch.nn.Module):
    """Whisper log-mel of whole 30-s windows, each normalised by its own maximum
    (padding included, as the reference pads every window to 30 s)."""

    def __init__(self, spec: AudioSpec) -> None:
        super().__init__()
        self.spec = spec
        extractor = WhisperFeatureExtractor(
            feature_size=spec.num_mel_bins,
            sampling_rate=spec.sampling_rate,
            hop_length=spec.hop_length,
            n_fft=spec.n_fft,
            chunk_length=spec.window_seconds,
        )
        # Not in the checkpoint: made here, on the device vLLM builds the model on,
        # in float32 whatever the model's dtype (as the reference computes them).
        self.register_buffer(
            "mel_filters",
            torch.tensor(extractor.mel_filters.T, dtype=torch.float32),
            persistent=False,
        )
        self.register_buffer(
            "window", torch.hann_window(spec.n_fft, dtype=torch.float32), persistent=False
        )

    def split_windows(self, audios: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        """Zero-padded [num_windows, window_samples] float32 PCM of the windows that yield
        audio tokens, and each window's count of valid mel frames."""
        rows: list[torch.Tensor] = []
        frame_counts: list[int] = []
        for audio in audios:
            counts = self.spec.window_frame_counts(audio.numel())
            audio = audio[: len(counts) * self.spec.window_samples]  # a tokenless tail dropped
            audio = audio.to(self.window.device, torch.float32)
            padded_len = len(counts) * self.spec.window_samples
            padded = torch.nn.functional.pad(audio, (0, padded_len - audio.numel()))
            rows.append(padded.view(-1, self.spec.window_samples))
            frame_counts.extend(counts)
        return torch.cat(rows), frame_counts

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """[num_windows, window_samples] PCM -> [num_windows, mel_bins, window_frames]."""
        if windows.device.type == "cpu":
            # Window by window: a 10-min clip's intermediates at once (~180 MB) land in
            # fresh pages on every call and run 3x slower on a CPU core. A GPU takes them
            # in one batch. Each window is normalised alone, so the result is the same.
            return torch.cat([self._log_mel(window) for window in windows.split(1)])
        return self._log_mel(windows)

    def _log_mel(self, windows: torch.Tensor) -> torch.Tensor:
        stft = torch.stft(
            windows,
            self.spec.n_fft,
            self.spec.hop_length,
            window=self.window,
            return_complex=True,
        )
        frames = stft[..., :-1]  # Whisper drops the last frame
        # re^2 + im^2 rather than |z|^2: no square root, twice as fast on a CPU core.
        power = frames.real.square() + frames.imag.square()
        log_spec = torch.clamp(self.mel_filters @ power, min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - 8.0)
        return (log_spec + 4.0) / 4.0
