"""The AF-Whisper audio encoder and the adaptor, built from vLLM layers.

Every 30-s window goes through the conv front end at full length (cheap, and it
reproduces the reference's view of the zero padding); after that only the valid
positions of all windows are packed into one sequence, and attention runs varlen
over `cu_seqlens` (FlashAttention on CUDA, SDPA on CPU) with one segment a window.
No attention or MLP work is spent on padding, and the layers shard under tensor
parallelism like the rest of vLLM.
"""

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from transformers import PretrainedConfig
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.model_executor.layers.activation import get_act_fn
from vllm.model_executor.layers.attention import MMEncoderAttention
from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper
from vllm.model_executor.models.whisper import (
    WhisperEncoderLayer,
    _create_fake_bias_for_k_proj,
)

from af3_model_executor.audio_spec import positions_after_conv

# Official names -> vLLM's fused qkv_proj and nested mlp of WhisperEncoderLayer.
_ENCODER_LAYER_MAPPER = WeightsMapper(
    orig_to_new_substr={".fc1.": ".mlp.fc1.", ".fc2.": ".mlp.fc2."},
    orig_to_new_stacked={
        ".self_attn.q_proj": (".self_attn.qkv_proj", "q"),
        ".self_attn.k_proj": (".self_attn.qkv_proj", "k"),
        ".self_attn.v_proj": (".self_attn.qkv_proj", "v"),
    },
)


class AF3AudioEncoder(nn.Module):
    """Whisper-large-v3-shaped encoder, then average pool (time/2) and LayerNorm."""

    def __init__(self, vllm_config: VllmConfig, audio_config: PretrainedConfig, prefix: str = ""):
        super().__init__()
        dim = audio_config.hidden_size
        self.conv1 = nn.Conv1d(audio_config.num_mel_bins, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(audio_config.max_source_positions, dim)
        layer_config = vllm_config.with_hf_config(audio_config)
        self.layers = nn.ModuleList(
            WhisperEncoderLayer(vllm_config=layer_config, prefix=f"{prefix}.layers.{i}")
            for i in range(audio_config.num_hidden_layers)
        )
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, mel: torch.Tensor, frame_counts: list[int]) -> torch.Tensor:
        """[num_windows, mel_bins, 3000] log-mel and each window's valid frame count
        -> [total_tokens, dim], the windows' audio tokens one after the other."""
        mel = mel.to(self.conv1.weight.dtype)
        hidden = nn.functional.gelu(self.conv1(mel))
        hidden = nn.functional.gelu(self.conv2(hidden)).transpose(1, 2)

        lengths = [positions_after_conv(frames) for frames in frame_counts]
        positions = self.embed_positions.weight
        packed = torch.cat([hidden[i, :n] + positions[:n] for i, n in enumerate(lengths)])
        cu_seqlens = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
        attn_metadata = self._attn_metadata(cu_seqlens, packed.shape[-1], packed.device)
        for layer in self.layers:
            packed = layer(packed, **attn_metadata)

        # Average pool pairs of positions inside each window; an odd last position
        # is dropped, as AvgPool1d(2, 2) does. Our processor sends only windows that yield a
        # token (AudioSpec.window_frame_counts), and the shape is spelled out so that a
        # window of one position would still pool to nothing instead of failing the step.
        dim = packed.shape[-1]
        pairs = [
            window[: 2 * (n // 2)].reshape(n // 2, 2, dim)
            for window, n in zip(torch.split(packed, lengths), lengths, strict=True)
        ]
        return self.layer_norm(torch.cat(pairs).mean(dim=1))

    def _attn_metadata(
        self, cu_seqlens: np.ndarray, dim: int, device: torch.device
    ) -> dict[str, torch.Tensor | None]:
        backend = self.layers[0].self_attn.attn.attn_backend
        return {
            "cu_seqlens": MMEncoderAttention.maybe_recompute_cu_seqlens(
                backend, cu_seqlens, dim, get_tensor_model_parallel_world_size(), device
            ),
            "max_seqlen": torch.tensor(
                MMEncoderAttention.compute_max_seqlen(backend, cu_seqlens), dtype=torch.int32
            ),
            "sequence_lengths": MMEncoderAttention.maybe_compute_seq_lens(
                backend, cu_seqlens, device
            ),
        }

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # Whisper's k_proj has no bias, but the fused qkv bias has a k slice: vLLM's helper
        # (as ultravox.py uses it) adds a zero `.self_attn.k_proj.bias` for each k_proj.
        weights = _create_fake_bias_for_k_proj(weights, ".self_attn.k_proj.weight")
        return AutoWeightsLoader(self).load_weights(weights, mapper=_ENCODER_LAYER_MAPPER)


class AF3Projector(nn.Module):
    """The adaptor MLP: column- then row-parallel, so it shards with the decoder."""

    def __init__(
        self, audio_dim: int, text_dim: int, act: str, bias: bool, prefix: str = ""
    ) -> None:
        super().__init__()
        self.linear_1 = ColumnParallelLinear(
            audio_dim, text_dim, bias=bias, prefix=f"{prefix}.linear_1"
        )
        self.act = get_act_fn(act)
        self.linear_2 = RowParallelLinear(
            text_dim, text_dim, bias=bias, prefix=f"{prefix}.linear_2"
        )

    def forward(self, audio_features: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.linear_1(audio_features)
        hidden = self.act(hidden)
        hidden, _ = self.linear_2(hidden)
        return hidden
