"""AF3's Whisper log-mel, computed inside the model on its device.

The API process only ships 16 kHz PCM; the log-mel is batched here over every window of
a step (the windows and their token counts are `audio_spec.AudioSpec`'s). The numbers
follow transformers' `WhisperFeatureExtractor` exactly, so features equal the reference
implementation's.
"""

import torch

from af3_model_executor.audio_spec import AudioSpec


class LogMel(torch.nn.Module):
    """Whisper log-mel of whole 30-s windows, each normalised by its own maximum
    (padding included, as the reference pads every window to 30 s)."""

    def __init__(self, spec: AudioSpec) -> None:
        super().__init__()
        self.spec = spec
        extractor = spec.feature_extractor()
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
