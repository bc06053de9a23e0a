"""MusicFlamingo's rotary time embeddings (RoTE), from each window's time, not from input_ids.

transformers 5.19 (`MusicFlamingoRotaryEmbedding`, `apply_rotary_time_emb`) rotates the
pooled, LayerNorm-ed encoder output before the adaptor. Each token of window `w` of its
audio (counted from 0 in every audio) at position `j` of the window has the time
`t = w * 750 * 0.04 + j * 0.04` s (`audio_frame_step` 0.01 s, x4 for the conv's stride and
the pooling). Two axes of `dim = int(head_dim * partial_rotary_factor)` channels each
(`head_dim` is the encoder's width: 256 of 1280 for `partial_rotary_factor` 0.2), inverse
frequencies
`rope_theta ** -(2i / dim)` (`rope_theta` 1200):

- the window axis: `round(window start / 30 s) / max_positions * inv_freq`;
- the position axis: `j / max_positions * 2 pi * inv_freq`;

(`max_positions` is the config's `max_position_embeddings`, which MusicFlamingoConfig sets
to `rope_theta`), both multiplied by `-2 pi t` and interleaved in pairs. The angles are
float32; the rotation of the first `2 * dim` channels is done in float64, the rest pass
through, and the result goes back to the model's dtype. Every operation below is the
reference's own, in its order, so the float32 angles (up to ~4e4 rad for 30-min audio,
where one float32 step is ~4e-3 rad) round exactly as there.

Our processor counted each audio's placeholders from the same 30-s windows
(`AudioSpec.window_frame_counts`); the model gets every audio's PCM as its own item, so
each window's index within its audio is known here without looking at the prompt.
"""

from math import pi

import torch
from torch import nn
from transformers import PretrainedConfig

from af3_model_executor.audio_spec import AudioSpec, tokens_after_pooling


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs: (x0, x1) -> (-x1, x0)."""
    x1, x2 = x.reshape(*x.shape[:-1], -1, 2).unbind(dim=-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


class RotaryTimeEmbedding(nn.Module):
    def __init__(self, config: PretrainedConfig, spec: AudioSpec) -> None:
        super().__init__()
        rope = config.rope_parameters
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"rotary time embeddings of rope_type {rope['rope_type']!r}")
        # MusicFlamingoConfig sets head_dim to the encoder's width (config.json may repeat it).
        head_dim = getattr(config, "head_dim", None) or config.audio_config.hidden_size
        dim = int(head_dim * rope.get("partial_rotary_factor", 1.0))
        self.max_positions = config.max_position_embeddings
        # Not in the checkpoint: computed on the CPU as the reference does (bit for bit),
        # then put on the device vLLM builds the model on; float32 whatever the model's dtype.
        device = torch.get_default_device()
        with torch.device("cpu"):
            inv_freq = 1.0 / (
                rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)
            )
            positions = torch.arange(int(self.max_positions), dtype=inv_freq.dtype)
            positions = positions / self.max_positions * (2 * pi)
            angles = torch.repeat_interleave(positions.unsqueeze(-1) * inv_freq, 2, dim=-1)
        self.register_buffer("inv_freq", inv_freq.to(device), persistent=False)
        self.register_buffer("position_angles", angles.to(device), persistent=False)
        self.frame_step = config.audio_frame_step
        self.window_tokens = tokens_after_pooling(spec.window_frames)  # 750

    def forward(self, tokens: torch.Tensor, window_frames: list[list[int]]) -> torch.Tensor:
        """`tokens`: [total, dim], the windows' tokens one after the other (the encoder's
        packed output); `window_frames`: each audio's windows' valid mel frames."""
        device = tokens.device
        counts = [tokens_after_pooling(n) for frames in window_frames for n in frames]
        counts_t = torch.tensor(counts, device=device)
        index = torch.tensor([i for frames in window_frames for i in range(len(frames))])
        window = torch.repeat_interleave(index.to(device), counts_t)
        starts = torch.repeat_interleave(torch.cumsum(counts_t, 0) - counts_t, counts_t)
        position = torch.arange(tokens.shape[0], device=device) - starts

        # transformers' _build_audio_timestamps and MusicFlamingoRotaryEmbedding.forward.
        embed_step = self.frame_step * 4
        window_starts = (window * self.window_tokens).to(torch.float32) * embed_step
        times = window_starts + position.to(torch.float32) * embed_step
        window_duration = self.frame_step * 4 * self.window_tokens
        window_positions = torch.round(window_starts / window_duration) / self.max_positions
        window_freqs = torch.repeat_interleave(
            window_positions.unsqueeze(-1) * self.inv_freq, 2, dim=-1
        )
        freqs = torch.cat((window_freqs, self.position_angles[position]), dim=-1)
        freqs = freqs * (-times * 2 * pi).to(freqs).unsqueeze(-1)

        # apply_rotary_time_emb: in float64, the first channels rotated, the rest as they are.
        hidden = tokens.to(torch.float64)
        cos, sin = freqs.cos().to(hidden), freqs.sin().to(hidden)
        rotated = hidden[..., : cos.shape[-1]]
        rotated = rotated * cos + rotate_half(rotated) * sin
        return torch.cat((rotated, hidden[..., cos.shape[-1] :]), dim=-1).to(tokens.dtype)
